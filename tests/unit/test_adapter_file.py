"""The adapter file: bit-exact round trip, atomic writes, and one clear refusal per bad file."""

import json
import logging
import pickle
from pathlib import Path

import pytest
import torch
from comfyui_env import HUNG_AFTER_S
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import m2chat_core.adapter_file as adapter_file_module
from m2chat_core.adapter import M3Adapter, M3AdapterConfig
from m2chat_core.adapter_file import (
    AdapterFileError,
    CorruptAdapterFileError,
    IncompatibleAdapterError,
    InvalidAdapterConfigError,
    MissingKeysError,
    NotAnAdapterFileError,
    NotSafetensorsError,
    ShapeMismatchError,
    TruncatedAdapterFileError,
    UnexpectedKeysError,
    UnsupportedFormatVersionError,
    VLMDeltas,
    check_compatible,
    load_adapter_file,
    save_adapter_file,
)
from m2chat_core.encoding import VLMFeatures

CONFIG = M3AdapterConfig(
    vlm_hidden_size=16, vision_feature_size=12, chosen_layers=(-1, -2), width=16, depth=1, heads=2,
    gate_mode="learned", trained_on_vlm="tiny-llava",
)
DELTAS = VLMDeltas(
    kind="lora",
    tensors={"language_model.layers.0.q_proj.lora_A.weight": torch.randn(4, 16, dtype=torch.bfloat16),
             "language_model.layers.0.q_proj.lora_B.weight": torch.randn(16, 4, dtype=torch.bfloat16)},
    config={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]},
)


def make_adapter(dtype=torch.float32) -> M3Adapter:
    torch.manual_seed(0)
    adapter = M3Adapter(CONFIG).to(dtype)
    with torch.no_grad():  # move the gate off its initial values so the round trip is checked
        adapter.learned_gate.scale.fill_(1.25)
    return adapter


@pytest.fixture
def saved(tmp_path) -> Path:
    return save_adapter_file(tmp_path / "adapter.safetensors", make_adapter())


def metadata_of(path: Path) -> dict[str, str]:
    with safe_open(path, framework="pt") as file:
        return file.metadata()


def tensors_of(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


def same_bits(first: torch.Tensor, second: torch.Tensor) -> bool:
    return first.dtype == second.dtype and torch.equal(
        first.reshape(-1).view(torch.uint8), second.reshape(-1).view(torch.uint8)
    )


def rewrite(path: Path, tensors: dict[str, torch.Tensor], **metadata_changes: str) -> Path:
    metadata = {**metadata_of(path), **metadata_changes}
    save_file(tensors, path, metadata=metadata)
    return path


# --- round trip -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    adapter = make_adapter(dtype)
    path = save_adapter_file(tmp_path / "a.safetensors", adapter, DELTAS)
    loaded = load_adapter_file(path)
    assert loaded.config == CONFIG
    original = adapter.state_dict()
    assert set(loaded.adapter_state) == set(original)
    for name, tensor in original.items():
        assert tensor.dtype == dtype and same_bits(loaded.adapter_state[name], tensor), name
    assert loaded.vlm_deltas.kind == "lora" and loaded.vlm_deltas.config == DELTAS.config
    for name, tensor in DELTAS.tensors.items():
        assert same_bits(loaded.vlm_deltas.tensors[name], tensor)


def test_format_1_file_with_0_dim_gate_loads_with_one_element_gate(saved):
    """Format 1 stored the gate's a and b 0-dim; sharded training needs them (1,)."""
    tensors = tensors_of(saved)
    assert tensors["adapter.learned_gate.scale"].shape == (1,)
    old = {name: tensor.reshape(()) if "learned_gate" in name else tensor for name, tensor in tensors.items()}
    config = json.loads(metadata_of(saved)["m2chat.config"])
    rewrite(saved, old, **{"m2chat.format_version": "1", "m2chat.config": json.dumps({**config, "format_version": 1})})
    loaded = load_adapter_file(saved)
    assert loaded.adapter_state["learned_gate.scale"].shape == (1,)
    assert loaded.build_adapter().learned_gate.scale.item() == 1.25
    resaved = save_adapter_file(saved.parent / "resaved.safetensors", loaded.build_adapter())
    assert metadata_of(resaved)["m2chat.format_version"] == "2"
    assert load_adapter_file(resaved).config.format_version == 2


def test_built_adapter_reproduces_outputs(saved):
    features = VLMFeatures(
        caption_hidden_states=torch.randn(1, 2, 4, 16),
        caption_mask=torch.ones(1, 4, dtype=torch.bool),
        answer_embedding=torch.randn(1, 16),
        caption_embedding=torch.randn(1, 16),
        has_answer=torch.ones(1, dtype=torch.bool),
        image_features=torch.randn(1, 3, 12),
    )
    loaded = load_adapter_file(saved)
    assert loaded.vlm_deltas is None
    rebuilt = loaded.build_adapter()
    with torch.no_grad():
        expected, actual = make_adapter().eval()(features), rebuilt(features)
    assert torch.equal(expected.context, actual.context) and torch.equal(expected.pooled, actual.pooled)
    assert rebuilt.learned_gate.scale.item() == 1.25 and not rebuilt.training


def test_metadata_holds_config_json_and_format_version(saved):
    metadata = metadata_of(saved)
    assert metadata["m2chat.format_version"] == "2"
    assert M3AdapterConfig.from_dict(json.loads(metadata["m2chat.config"])) == CONFIG
    assert all(name.startswith("adapter.") for name in tensors_of(saved))


def test_full_deltas_without_config_round_trip(tmp_path):
    deltas = VLMDeltas(kind="full", tensors={"multi_modal_projector.linear_1.bias": torch.arange(4.0)})
    loaded = load_adapter_file(save_adapter_file(tmp_path / "a.safetensors", make_adapter(), deltas))
    assert loaded.vlm_deltas.kind == "full" and loaded.vlm_deltas.config is None
    assert torch.equal(loaded.vlm_deltas.tensors["multi_modal_projector.linear_1.bias"], torch.arange(4.0))
    assert "vlm.multi_modal_projector.linear_1.bias" in tensors_of(tmp_path / "a.safetensors")


def test_lora_deltas_need_rank_and_alpha_and_whole_pairs():
    """A LoRA's scale is lora_alpha / r: without either the file cannot be applied right, so it
    is refused (never guessed), by the node and the training merge alike."""
    pair = dict(DELTAS.tensors)
    for config in (None, {"r": 4}, {"lora_alpha": 8}, {"r": 0, "lora_alpha": 8}):
        with pytest.raises(ValueError, match="need a positive 'r'|need a positive 'lora_alpha'"):
            VLMDeltas(kind="lora", tensors=pair, config=config)
    with pytest.raises(ValueError, match="rank r = 2"):
        VLMDeltas(kind="lora", tensors=pair, config={"r": 2, "lora_alpha": 8})
    down, up = sorted(pair)
    with pytest.raises(ValueError, match="lacks .*lora_B.weight"):
        VLMDeltas(kind="lora", tensors={down: pair[down]}, config=DELTAS.config)
    with pytest.raises(ValueError, match="has no lora_A.weight beside it"):
        VLMDeltas(kind="lora", tensors={up: pair[up]}, config=DELTAS.config)
    assert VLMDeltas(kind="lora", tensors=pair, config=DELTAS.config).lora_scale == 2.0


def test_a_file_whose_lora_lacks_its_alpha_is_refused(tmp_path):
    path = save_adapter_file(tmp_path / "a.safetensors", make_adapter(), DELTAS)
    rewrite(path, tensors_of(path), **{"m2chat.vlm_delta_config": json.dumps({"r": 4, "target_modules": ["q_proj"]})})
    with pytest.raises(InvalidAdapterConfigError, match="a.safetensors has VLM deltas .*positive 'lora_alpha'"):
        load_adapter_file(path)


# --- atomic write -----------------------------------------------------------------------


def test_overwrite_leaves_no_temporary_files(saved):
    save_adapter_file(saved, make_adapter(torch.bfloat16))
    assert [path.name for path in saved.parent.iterdir()] == [saved.name]
    assert load_adapter_file(saved).adapter_state["queries"].dtype == torch.bfloat16


def test_failed_write_keeps_the_old_file(saved, monkeypatch):
    before = saved.read_bytes()

    def failing_fsync(descriptor):  # the bytes were written, but never reached the disk
        raise OSError("disk full")

    monkeypatch.setattr(adapter_file_module.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_adapter_file(saved, make_adapter(torch.bfloat16))
    assert saved.read_bytes() == before
    assert [path.name for path in saved.parent.iterdir()] == [saved.name]


# --- refusals ---------------------------------------------------------------------------


class _TouchOnUnpickle:
    """Unpickling this creates a marker file: proof that a loader unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("kind", ["torch-zip", "torch-legacy", "pickle"])
def test_pickled_checkpoints_are_refused_unread(tmp_path, kind):
    marker = tmp_path / "unpickled"
    path = tmp_path / "renamed.safetensors"
    payload = {"state": _TouchOnUnpickle(marker), "w": torch.zeros(2)}
    if kind == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=4))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=kind == "torch-zip")
    with pytest.raises(NotSafetensorsError, match="never unpickles") as error:
        load_adapter_file(path)
    assert type(error.value) is NotSafetensorsError
    assert "re-export" in str(error.value)
    assert not marker.exists()


def test_other_formats_are_refused(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("hello, this is not a tensor file at all")
    with pytest.raises(NotSafetensorsError, match="some other format"):
        load_adapter_file(path)


@pytest.mark.parametrize("keep", ["3 bytes", "half the header", "half the data", "all but one byte"])
def test_truncated_files_are_refused(saved, keep):
    data = saved.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    length = {
        "3 bytes": 3,
        "half the header": header_end // 2,
        "half the data": (header_end + len(data)) // 2,
        "all but one byte": len(data) - 1,
    }[keep]
    saved.write_bytes(data[:length])
    with pytest.raises(TruncatedAdapterFileError, match="copy the adapter file again") as error:
        load_adapter_file(saved)
    assert type(error.value) is TruncatedAdapterFileError


def test_corrupt_header_is_refused(saved):
    data = bytearray(saved.read_bytes())
    data[9:14] = b"#@!?%"  # damage the JSON just after its opening brace
    saved.write_bytes(bytes(data))
    with pytest.raises(CorruptAdapterFileError, match="damaged safetensors header") as error:
        load_adapter_file(saved)
    assert type(error.value) is CorruptAdapterFileError


def test_plain_safetensors_is_not_an_adapter(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet.down.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(NotAnAdapterFileError, match="models/loras"):
        load_adapter_file(path)


@pytest.mark.parametrize(("version", "fix"), [("3", "update comfyui-m2chat"), ("zero", "re-export")])
def test_unknown_or_newer_format_version_is_refused(saved, version, fix):
    rewrite(saved, tensors_of(saved), **{"m2chat.format_version": version})
    with pytest.raises(UnsupportedFormatVersionError, match=fix):
        load_adapter_file(saved)


@pytest.mark.parametrize(
    ("config_json", "message"),
    [("{not json", "unreadable config JSON"), (json.dumps({**CONFIG.to_dict(), "heads": 3}), "divisible")],
)
def test_invalid_config_is_refused(saved, config_json, message):
    rewrite(saved, tensors_of(saved), **{"m2chat.config": config_json})
    with pytest.raises(InvalidAdapterConfigError, match=message):
        load_adapter_file(saved)


def test_missing_keys_are_refused(saved):
    tensors = tensors_of(saved)
    del tensors["adapter.queries"]
    rewrite(saved, tensors)
    with pytest.raises(MissingKeysError, match="queries") as error:
        load_adapter_file(saved)
    assert "re-export" in str(error.value)


@pytest.mark.parametrize("extra", ["adapter.blocks.5.ffn.0.weight", "unet.conv_in.weight"])
def test_unexpected_keys_are_refused(saved, extra):
    rewrite(saved, {**tensors_of(saved), extra: torch.zeros(1)})
    with pytest.raises(UnexpectedKeysError, match="update comfyui-m2chat") as error:
        load_adapter_file(saved)
    assert extra in str(error.value)


def test_wrong_shapes_are_refused(saved):
    tensors = tensors_of(saved)
    tensors["adapter.image_projection.1.weight"] = torch.zeros(16, 13)
    rewrite(saved, tensors)
    with pytest.raises(ShapeMismatchError, match=r"\(16, 13\).*\(16, 12\)"):
        load_adapter_file(saved)


def test_vlm_deltas_without_a_kind_are_refused(saved):
    rewrite(saved, {**tensors_of(saved), "vlm.projector.bias": torch.zeros(2)})
    with pytest.raises(InvalidAdapterConfigError, match="VLM deltas"):
        load_adapter_file(saved)


def test_every_refusal_is_a_value_error_with_its_own_class():
    classes = [
        NotSafetensorsError, CorruptAdapterFileError, TruncatedAdapterFileError, NotAnAdapterFileError,
        UnsupportedFormatVersionError, InvalidAdapterConfigError, MissingKeysError, UnexpectedKeysError,
        ShapeMismatchError, IncompatibleAdapterError,
    ]
    assert len(set(classes)) == len(classes)
    assert all(issubclass(cls, AdapterFileError) and issubclass(cls, ValueError) for cls in classes)


# --- compatibility with the loaded VLM ---------------------------------------------------


def test_check_compatible_names_both_sizes_and_the_training_vlm():
    check_compatible(CONFIG, 16, 12, "tiny-llava")
    with pytest.raises(IncompatibleAdapterError) as error:
        check_compatible(CONFIG, 4096, 12, "llava-1.5-7b")
    message = str(error.value)
    assert all(part in message for part in ("16", "4096", "tiny-llava", "llava-1.5-7b"))
    with pytest.raises(IncompatibleAdapterError, match=r"vision feature size 12 but qwen2-vl has 1280"):
        check_compatible(CONFIG, 16, 1280, "qwen2-vl")


def test_check_compatible_warns_on_another_vlm_of_the_same_size(caplog):
    with caplog.at_level(logging.WARNING, logger="m2chat_core.adapter_file"):
        check_compatible(CONFIG, 16, 12, "tiny-qwen")
    assert "tiny-llava" in caplog.text and "tiny-qwen" in caplog.text


def test_header_length_starting_with_the_pickle_byte_is_still_safetensors(tmp_path):
    # The header length is little-endian: its first byte may be 0x80, like a pickle's.
    adapter = make_adapter()
    for padding in range(0, 512, 8):
        path = save_adapter_file(tmp_path / "a.safetensors", adapter)
        rewrite(path, tensors_of(path), padding="x" * padding)
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length whose first byte is 0x80")
    assert load_adapter_file(path).config == CONFIG


def test_same_adapter_gives_byte_identical_files_across_processes(tmp_path):
    """safetensors orders metadata by a per-process hash; the file must not."""
    import subprocess
    import sys

    script = ("import sys, torch; from m2chat_core.tiny import build_tiny_adapter; "
              "build_tiny_adapter(sys.argv[1], vlm_hidden_size=32, vision_feature_size=16, trained_on_vlm='x')")
    files = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for path in files:
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, cwd=Path(__file__).parents[2],
                       timeout=HUNG_AFTER_S)
    assert files[0].read_bytes() == files[1].read_bytes() == files[2].read_bytes()
