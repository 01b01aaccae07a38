//! Operators' grants: enrolment tokens, relays, target labels and token
//! rotation.

use std::time::Duration;

use anyhow::Context;
use convoy_client::Client;
use convoy_wire::{
    EnrolTokenInfo, LabelChange, Labels, NewEnrolToken, RelayGrant, RelayInfo, RotatedToken, TargetInfo,
};

use crate::output::{self, line, Format};

async fn delete<T: serde::de::DeserializeOwned>(c: &Client, path: &str, what: &str) -> anyhow::Result<T> {
    let resp = c.request(reqwest::Method::DELETE, path).send().await.with_context(|| what.to_owned())?;
    Ok(Client::check(resp).await?.json().await?)
}

fn labels_or(l: &Option<Labels>, none: &str) -> String {
    match l {
        Some(l) if !l.0.is_empty() => l.to_string(),
        Some(_) => "(none)".into(),
        None => none.into(),
    }
}

pub async fn enrol_token_create(
    c: &Client,
    labels: Option<&str>,
    expires: Option<&str>,
    uses: Option<i64>,
    gateway: bool,
    fmt: Format,
) -> anyhow::Result<()> {
    let req = NewEnrolToken {
        gateway,
        labels: labels.map(Labels::parse).transpose()?,
        expires_in_secs: expires.map(crate::parse_duration).transpose()?,
        uses,
    };
    let t: EnrolTokenInfo = c.send_json(reqwest::Method::POST, "/enrol-tokens", &req).await?;
    match fmt {
        Format::Json => output::json(&t),
        Format::Table => {
            line(t.token.clone().unwrap_or_default());
            eprintln!(
                "{} {} made: {} with it get {}; {}, {}. The secret above is shown only now.",
                if t.gateway { "DDI gateway token" } else { "enrolment token" },
                t.id,
                if t.gateway { "devices registered" } else { "targets enrolled" },
                labels_or(&t.labels, "the labels they ask for"),
                t.expires_at.map_or("no expiry".into(), |e| format!("expires {}", output::time(e))),
                t.max_uses.map_or("any number of uses".into(), |u| format!("{u} uses")),
            );
        }
    }
    Ok(())
}

pub async fn enrol_token_list(c: &Client, fmt: Format) -> anyhow::Result<()> {
    let list: Vec<EnrolTokenInfo> = c.get_json("/enrol-tokens", Duration::from_secs(30)).await?;
    match fmt {
        Format::Json => output::json(&list),
        Format::Table => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        labels_or(&t.labels, "(asked by agent)"),
                        t.expires_at.map_or("-".into(), output::time),
                        match t.max_uses {
                            Some(m) => format!("{}/{m}", t.uses),
                            None => t.uses.to_string(),
                        },
                        t.created_by.clone(),
                        t.revoked_at.map_or("live".into(), |r| format!("revoked {}", output::time(r))),
                    ]
                })
                .collect();
            output::table(&["TOKEN", "LABELS", "EXPIRES", "USES", "BY", "STATE"], &rows);
        }
    }
    Ok(())
}

pub async fn enrol_token_revoke(c: &Client, id: &str, fmt: Format) -> anyhow::Result<()> {
    let t: EnrolTokenInfo = delete(c, &format!("/enrol-tokens/{id}"), "revoking the enrolment token").await?;
    match fmt {
        Format::Json => output::json(&t),
        Format::Table => line(format!("enrolment token {id} revoked; enrolled agents keep their own credentials")),
    }
    Ok(())
}

pub async fn rotate_user_token(c: &Client, name: &str, fmt: Format) -> anyhow::Result<()> {
    let r: RotatedToken =
        c.send_json(reqwest::Method::POST, &format!("/users/{name}/token"), &serde_json::json!({})).await?;
    match fmt {
        Format::Json => output::json(&r),
        Format::Table => {
            line(r.token.clone());
            eprintln!("{name}'s new token is above, shown only now; the old one no longer works");
        }
    }
    Ok(())
}

pub async fn label(c: &Client, id: &str, set: &[String], remove: &[String], fmt: Format) -> anyhow::Result<()> {
    let change = LabelChange { set: Labels::parse(&set.join(","))?, remove: remove.to_vec() };
    let t: TargetInfo = c.send_json(reqwest::Method::PATCH, &format!("/targets/{id}/labels"), &change).await?;
    match fmt {
        Format::Json => output::json(&t),
        Format::Table => line(format!("{} ({}) now has {}", t.id, t.hostname, t.labels)),
    }
    Ok(())
}

pub async fn relay_grant(c: &Client, id: &str, site: &str, url: Option<&str>, fmt: Format) -> anyhow::Result<()> {
    let g = RelayGrant { site: site.into(), url: url.map(str::to_owned) };
    let r: RelayInfo = c.send_json(reqwest::Method::PUT, &format!("/relays/{id}"), &g).await?;
    match fmt {
        Format::Json => output::json(&r),
        Format::Table => line(format!(
            "{} ({}) relays for site {} at {}",
            r.target_id,
            r.hostname,
            r.site,
            r.url.as_deref().unwrap_or("(the URL it reports; none yet)")
        )),
    }
    Ok(())
}

pub async fn relay_revoke(c: &Client, id: &str, fmt: Format) -> anyhow::Result<()> {
    let v: serde_json::Value = delete(c, &format!("/relays/{id}"), "revoking the relay").await?;
    match fmt {
        Format::Json => output::json(&v),
        Format::Table => line(format!("{id} is no longer a relay; its site's agents fetch elsewhere")),
    }
    Ok(())
}

pub async fn relay_list(c: &Client, fmt: Format) -> anyhow::Result<()> {
    let list: Vec<RelayInfo> = c.get_json("/relays", Duration::from_secs(30)).await?;
    match fmt {
        Format::Json => output::json(&list),
        Format::Table => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|r| {
                    vec![
                        r.target_id.clone(),
                        r.hostname.clone(),
                        r.site.clone(),
                        r.url.clone().unwrap_or_else(|| "-".into()),
                        r.granted_by.clone(),
                        output::time(r.granted_at),
                    ]
                })
                .collect();
            output::table(&["TARGET", "HOST", "SITE", "URL", "GRANTED BY", "GRANTED"], &rows);
        }
    }
    Ok(())
}
