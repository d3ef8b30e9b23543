"""Sharing an activation dataset on the Hugging Face Hub: checked before any work, uploaded after it.

``mechdemo extract --push-to-hub REPO`` checks the repo id and the login first (the upload comes
last, after the whole extraction) and uploads the finished folder as a private dataset repo; if the
upload fails, the dataset stays complete on disk and its manifest records the error. The token is
only looked up, never printed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mechdemo.data.dataset import MANIFEST
from mechdemo.errors import MechdemoError
from mechdemo.files import write_json_atomic

log = logging.getLogger(__name__)


def check_hub_repo(repo: str) -> None:
    """``--push-to-hub REPO`` can work: a valid repo id, and a Hugging Face login to upload with.

    Checked before any work (the upload comes last, after the whole extraction); the token is
    only looked up, never printed."""
    try:
        from huggingface_hub import get_token
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError as err:  # pragma: no cover - huggingface_hub comes with transformers
        raise MechdemoError("--push-to-hub needs the huggingface_hub package: pip install huggingface_hub") from err
    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        raise MechdemoError(f"--push-to-hub {repo!r} is not a Hub repo id: use NAME or USER/NAME (letters, digits, "
                            f"'-', '_', '.'; {err})") from None
    if not get_token():
        raise MechdemoError("--push-to-hub needs a Hugging Face login with write access: run `hf auth login` (or "
                            "set HF_TOKEN), or drop --push-to-hub and upload the finished folder later with "
                            "`hf upload`")


def push_dataset(out: Path, repo: str, manifest: dict) -> dict:
    """Upload the dataset folder to a Hub dataset repo; on failure keep everything local and say so."""
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo, repo_type="dataset", exist_ok=True, private=True)
        api.upload_folder(folder_path=str(out), repo_id=repo, repo_type="dataset",
                          allow_patterns=["*.arrow", "*.json"], ignore_patterns=["progress-*.json"])
        manifest["pushed_to_hub"] = {"repo": repo, "ok": True}
    except Exception as err:  # noqa: BLE001 - any failure: keep the local copy, report, go on
        log.warning("Upload to %s failed (%s: %s). Nothing is lost: the dataset is complete in %s; "
                    "upload it later with `hf upload %s %s --repo-type dataset`.",
                    repo, type(err).__name__, err, out, repo, out)
        manifest["pushed_to_hub"] = {"repo": repo, "ok": False, "error": f"{type(err).__name__}: {err}"}
    write_json_atomic(out / MANIFEST, manifest)
    return manifest
