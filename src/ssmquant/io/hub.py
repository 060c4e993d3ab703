"""The one place that talks to the Hugging Face Hub.

Errors come out as one line: offline, a missing repo, or a missing file each say which, and what to do instead.
``HF_HUB_OFFLINE=1`` is honoured by huggingface_hub itself (cached files still load).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError


def hub_file(repo: str, filename: str, *, what: str = "file", hint: str = "", revision: str | None = None) -> Path:
    """Download (or find in the local cache) ``filename`` of Hub repo ``repo``; return its local path."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError, RepositoryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub is a core dependency
        raise CheckpointError("huggingface_hub is not installed; pip install huggingface_hub") from None
    try:
        return Path(hf_hub_download(repo, filename, revision=revision))
    except EntryNotFoundError:
        raise CheckpointError(f"Hub repo {repo} has no {filename}" + (f"; {hint}" if hint else "")) from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"Hub repo {repo} not found (or private); check the id or log in") from None
    except Exception as e:  # connection errors come in many types across huggingface_hub versions
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise CheckpointError(
            f"cannot fetch {what} {filename} of {repo} from the Hub (offline? {msg})"
            + (f"; {hint}" if hint else "; pass a local directory instead")) from None


def hub_has_file(repo: str, filename: str, revision: str | None = None) -> bool:
    """True if ``filename`` exists in ``repo`` (network call, or the cache when offline)."""
    from huggingface_hub import file_exists

    try:
        return bool(file_exists(repo, filename, revision=revision))
    except Exception:
        try:
            from huggingface_hub import try_to_load_from_cache

            return isinstance(try_to_load_from_cache(repo, filename, revision=revision), str)
        except Exception:
            return False
