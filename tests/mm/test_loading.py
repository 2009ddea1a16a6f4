"""load_model: presets, local checkpoints (Qwen2.5-VL, Qwen2-VL, Qwen3-VL dense and MoE, Qwen3.5),
freezing, LoRA, checkpointing, backends; load_for_training: init_from."""

import pytest
import torch

from mm.attention import choose_backend, force_backend
from mm.imports import MissingDependency, require
from mm.loading import ModelConfig, load_for_training, load_model, model_parts, resolve_init
from tests.conftest import solid, tiny_qwen2_vl_config, user_assistant
from tests.testing_utils import require_peft


def test_save_and_load_local_checkpoint(family_model, family_encoder, tmp_path):
    tiny, encoder = family_model, family_encoder
    model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, proc2 = load_model(str(tmp_path), attn="sdpa")
    s = encoder.encode(
        user_assistant([{"type": "image", "image": solid(84, 56)}, {"type": "text", "text": "Q"}], "A")
    )
    with torch.no_grad():
        assert torch.allclose(model(**s.model_inputs()).logits, loaded(**s.model_inputs()).logits, atol=1e-6)
    text = "<|im_start|>user\nhi<|im_end|>"
    assert proc2.tokenizer(text)["input_ids"] == processor.tokenizer(text)["input_ids"]
    assert type(proc2) is type(processor) and proc2.chat_template == processor.chat_template
    assert proc2.image_processor.patch_size == processor.image_processor.patch_size


def test_load_local_qwen3vl_moe(tmp_path):
    """A saved tiny Qwen3-VL-MoE (4 experts, top 2) loads through the same call and gives the
    logits of the model that was saved."""
    from mm.encode import ConversationEncoder
    from mm.tiny import load_preset

    model, processor = load_preset("tiny-qwen3vl-moe")
    assert type(model).__name__ == "Qwen3VLMoeForConditionalGeneration"
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, proc2 = load_model(str(tmp_path), attn="sdpa", freeze=["vision_tower", "merger"])
    assert type(loaded).__name__ == "Qwen3VLMoeForConditionalGeneration"
    s = ConversationEncoder(proc2).encode(
        user_assistant([{"type": "image", "image": solid(96, 64)}, {"type": "text", "text": "Q"}], "A")
    )
    with torch.no_grad():
        assert torch.allclose(model(**s.model_inputs()).logits, loaded(**s.model_inputs()).logits, atol=1e-6)
    parts = model_parts(loaded)
    assert not any(p.requires_grad for p in parts["vision_tower"] + parts["merger"])


def test_load_local_qwen2_vl(tiny, tmp_path):
    from transformers import Qwen2VLForConditionalGeneration

    cfg = tiny_qwen2_vl_config(tiny[0].config)
    Qwen2VLForConditionalGeneration(cfg).save_pretrained(tmp_path)
    tiny[1].save_pretrained(tmp_path)
    model, _ = load_model(str(tmp_path))
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_model(str(tmp_path / "no-such-model"))


def test_unknown_model_type_names_the_supported_families(tmp_path):
    from transformers import LlavaConfig

    LlavaConfig().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model_type 'llava' is not supported; supported: .*qwen3_vl_moe"):
        load_model(str(tmp_path))


def test_training_starts_from_init_from_or_the_configured_model(tiny, tmp_path):
    """init_from: a run's output dir (its final/), a model dir, or a clear error; else the model."""
    m = ModelConfig(name_or_path="tiny", freeze=["vision_tower"])
    assert resolve_init(m, None) == "tiny"
    run, model_dir = tmp_path / "run", tmp_path / "model"
    (run / "final").mkdir(parents=True)
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    assert resolve_init(m, str(run)) == str(run / "final")
    assert resolve_init(m, str(model_dir)) == str(model_dir)
    with pytest.raises(FileNotFoundError, match="holds no final/ model"):
        resolve_init(m, str(tmp_path / "nothing"))
    model, _ = load_for_training(m, None, "sdpa", seed=0)  # fp32 under dtype auto, the parts frozen
    assert next(model.parameters()).dtype == torch.float32
    assert not any(p.requires_grad for p in model_parts(model)["vision_tower"])
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), tiny[0].parameters()))


def test_freeze_parts(preset):
    model, _ = load_model(preset, freeze=["vision_tower", "merger"])
    parts = model_parts(model)
    assert not any(p.requires_grad for p in parts["vision_tower"] + parts["merger"])
    assert all(p.requires_grad for p in parts["language_model"])
    # the parts cover every parameter exactly once (Qwen3-VL: the DeepStack mergers are mergers)
    ids = [id(p) for ps in parts.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    merger_names = {n for n, p in model.named_parameters() if any(p is q for q in parts["merger"])}
    assert any("deepstack_merger_list" in n for n in merger_names) == (preset == "tiny-qwen3vl")
    with pytest.raises(ValueError, match="unknown part"):
        load_model("tiny", freeze=["eyes"])


@require_peft
def test_lora_trains_only_adapters_on_language_model(preset):
    model, _ = load_model(preset, lora_r=4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    for proj in ("q_proj", "v_proj", "down_proj"):
        assert any(f"{proj}.lora_A" in n for n in trainable), proj


def test_gradient_checkpointing_gives_the_same_gradients(family_encoder, preset):
    encoder = family_encoder
    s = encoder.encode(
        user_assistant(
            [{"type": "image", "image": solid(84, 56)}, {"type": "text", "text": "Q?"}], "An answer."
        )
    )
    grads = []
    for ckpt in (False, True):
        model, _ = load_model(preset, gradient_checkpointing=ckpt)
        model.train()
        out = model(**s.model_inputs(), labels=s.labels[None])
        out.loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


def test_attention_backend_choice():
    assert choose_backend("auto", device="cpu") == "sdpa"
    assert choose_backend("eager") == "eager"
    with pytest.raises(RuntimeError, match="flash-attn"):
        choose_backend("flash_attention_2", device="cpu")
    with force_backend("eager"):
        assert choose_backend("auto") == "eager"
    with pytest.raises(ValueError, match="unknown attention backend"):
        choose_backend("fast")


def test_eager_and_sdpa_agree(family_encoder, preset):
    encoder = family_encoder
    s = encoder.encode(
        user_assistant([{"type": "image", "image": solid(84, 56)}, {"type": "text", "text": "Q?"}], "A.")
    )
    outs = []
    for attn in ("sdpa", "eager"):
        model, _ = load_model(preset, attn=attn)
        with torch.no_grad():
            outs.append(model(**s.model_inputs()).logits)
    assert torch.allclose(outs[0], outs[1], atol=1e-5)


def test_require_names_the_extra(monkeypatch):
    import mm.imports

    monkeypatch.setattr(mm.imports, "is_available", lambda name: False)
    with pytest.raises(
        MissingDependency, match=r"flash-attn is needed for packing on GPU.*pip install 'mmpost\[cuda\]'"
    ):
        require("flash_attn", "packing on GPU")
