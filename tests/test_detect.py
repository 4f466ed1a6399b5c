"""Source detection: each checkpoint kind is recognised by its files, and mixed, empty or
ambiguous inputs are refused with a message that says what was found and how to choose."""
from __future__ import annotations

import shutil

import pytest

import torch_sources

pytest.importorskip("torch")

from lmpack.convert.detect import detect, open_source  # noqa: E402
from lmpack.errors import LmpackError  # noqa: E402


@pytest.fixture(scope="module")
def folders(hf_checkpoint, tmp_path_factory):
    """One folder of each kind built from the same tiny model, plus a mixed one (safetensors + .bin)."""
    ckpt = hf_checkpoint()
    root = tmp_path_factory.mktemp("detect")
    st = root / "st"
    shutil.copytree(ckpt.path, st)
    out = {
        "hf-safetensors": st,
        "hf-bin": torch_sources.hf_to_bin(ckpt.path, root / "bin", shards=2),
        "meta": torch_sources.hf_to_meta(ckpt.path, root / "meta", mp=2),
    }
    mixed = root / "mixed"
    shutil.copytree(ckpt.path, mixed)
    torch_sources.hf_to_bin(ckpt.path, mixed)
    out["mixed"] = mixed
    return out


@pytest.mark.parametrize("kind", ["hf-safetensors", "hf-bin", "meta"])
def test_each_kind_detected_and_opened(folders, kind):
    assert detect(folders[kind]) == (folders[kind], kind)
    src = open_source(folders[kind])
    try:
        assert src.info.kind == kind
        assert src.config().n_layers == 2
        assert len(src.tensor_specs()) == 2 * 9 + 3
    finally:
        src.close()


def test_mixed_folder_refused(folders):
    with pytest.raises(LmpackError, match=r"more than one kind of checkpoint: .*safetensors.*pytorch_model\.bin"):
        open_source(folders["mixed"])


def test_naming_a_file_or_kind_picks_one(folders):
    mixed = folders["mixed"]
    assert detect(mixed / "pytorch_model.bin") == (mixed, "hf-bin")
    assert detect(mixed / "model.safetensors") == (mixed, "hf-safetensors")
    src = open_source(mixed, kind="hf-bin")
    assert src.info.kind == "hf-bin"
    src.close()
    src = open_source(mixed / "pytorch_model.bin")
    assert src.info.kind == "hf-bin"
    src.close()
    # config.json or tokenizer.model name the folder, which is then detected as usual.
    assert detect(folders["meta"] / "tokenizer.model") == (folders["meta"], "meta")
    assert detect(folders["hf-bin"] / "config.json") == (folders["hf-bin"], "hf-bin")
    with pytest.raises(LmpackError, match="one of: hf-safetensors, hf-bin, meta, gguf, llama2c"):
        open_source(mixed, kind="tflite")
    # the single-file kinds want a file
    with pytest.raises(LmpackError, match="no such file"):
        open_source(mixed, kind="gguf")


def test_empty_missing_and_stray_file(tmp_path):
    with pytest.raises(LmpackError, match="no checkpoint found"):
        open_source(tmp_path)
    with pytest.raises(LmpackError, match="no such file or folder"):
        open_source(tmp_path / "nope")
    stray = tmp_path / "notes.txt"
    stray.write_text("hello")
    with pytest.raises(LmpackError, match="is a file, not a checkpoint folder"):
        open_source(stray)


def test_params_json_beside_safetensors_is_hf(folders, tmp_path):
    # Mistral-style HF repos ship params.json next to the HF weights; that alone is not a Meta folder.
    folder = tmp_path / "st"
    shutil.copytree(folders["hf-safetensors"], folder)
    shutil.copy(folders["meta"] / "params.json", folder / "params.json")
    assert detect(folder) == (folder, "hf-safetensors")
    only_params = tmp_path / "p"
    only_params.mkdir()
    shutil.copy(folders["meta"] / "params.json", only_params / "params.json")
    with pytest.raises(LmpackError, match="no consolidated.NN.pth"):
        open_source(only_params)


def test_rope_factor_only_for_meta(folders):
    with pytest.raises(LmpackError, match="only to Meta"):
        open_source(folders["hf-bin"], rope_scaling_factor=32.0)


def test_sharded_bin_without_index_refused(folders, tmp_path):
    folder = tmp_path / "bin"
    shutil.copytree(folders["hf-bin"], folder)
    (folder / "pytorch_model.bin.index.json").unlink()
    with pytest.raises(LmpackError, match="no pytorch_model.bin.index.json"):
        open_source(folder)


def test_torch_sources_never_import_torch(folders):
    """The readers run where torch is not installed: a child interpreter opens and reads every
    tensor of the .bin and Meta folders with torch made unimportable."""
    import subprocess
    import sys

    from conftest import lmpack_pythonpath

    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any 'import torch' now raises ImportError\n"
        "from lmpack.convert.detect import open_source\n"
        "for path in sys.argv[1:]:\n"
        "    src = open_source(path)\n"
        "    total = sum(float(abs(src.load(s.name).astype('f8')).sum()) for s in src.tensor_specs())\n"
        "    assert total > 0, path\n"
        "    src.close()\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(folders["hf-bin"]), str(folders["meta"])],
                          capture_output=True, text=True, timeout=120, env={"PYTHONPATH": lmpack_pythonpath()})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
