"""An independent TUF client (python-tuf's ngclient) against a convoy
server: bootstrapped with a root given out of band, it refreshes the
repository's metadata and downloads one target.

usage: client.py SERVER_URL TOKEN ROOT_FILE TARGET_PATH DIGEST
prints OK LENGTH SHA256 on success (exit 0); REFUSED: why (exit 2).
"""

import sys
import tempfile
import urllib.error
import urllib.request

from tuf.api import exceptions
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface

base, token, root_file, target, digest = sys.argv[1:6]


class TokenFetcher(FetcherInterface):
    """Fetches with the convoy token (the repository is not public)."""

    def _fetch(self, url):
        req = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
        try:
            resp = urllib.request.urlopen(req, timeout=30)
        except urllib.error.HTTPError as e:
            raise exceptions.DownloadHTTPError(str(e), e.code) from e
        return iter(lambda: resp.read(65536), b"")


work = tempfile.mkdtemp()
with open(root_file, "rb") as f:
    root = f.read()
updater = Updater(
    metadata_dir=work,
    metadata_base_url=base + "/tuf/metadata/",
    target_dir=work,
    target_base_url=base + "/tuf/targets/",
    fetcher=TokenFetcher(),
    bootstrap=root,
)
try:
    updater.refresh()
    info = updater.get_targetinfo(target)
    if info is None:
        print("REFUSED: no such target", target)
        sys.exit(2)
    if info.custom.get("convoy", {}).get("digest") != digest:
        print("REFUSED: the signed digest is", info.custom)
        sys.exit(2)
    path = updater.download_target(info)
    print("OK", info.length, info.hashes["sha256"], path)
except (exceptions.RepositoryError, exceptions.DownloadError) as e:
    print("REFUSED:", type(e).__name__, e)
    sys.exit(2)
