//! `/api/v1/openapi.json` passes `openapi-spec-validator` (the Python
//! reference validator of OpenAPI documents).

mod common;

use common::*;

#[test]
fn the_openapi_document_is_valid_openapi() {
    let f = Fleet::start();
    let (status, body) = http(f.port, "GET", "/api/v1/openapi.json", None, b"").unwrap();
    assert_eq!(status, 200);
    let file = f.path("openapi.json");
    std::fs::write(&file, &body).unwrap();
    let out = std::process::Command::new(test_python("openapi_spec_validator"))
        .args([
            "-c",
            "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(open(sys.argv[1])))\nprint('valid')",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("valid"), "openapi-spec-validator refused the document:\n{text}");
}
