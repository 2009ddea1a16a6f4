"""An mmpost export is a plain Hugging Face folder of its family (Qwen2.5-VL, Qwen3-VL): it loads
with the Auto classes and, fed the way lmms-eval's ``qwen2_5_vl`` / ``qwen3_vl`` models feed it
(chat template + qwen-vl-utils at the family's patch size + processor), sees the same tokens and
pixels as mmpost, gives the same logits and generates the same text."""

import torch
from PIL import Image

from alignment.infra.export import export_hf
from evaluation.evaluate import generate
from mm.encode import ConversationEncoder
from mm.loading import load_model
from mm.models import family_of
from mm.records import Message
from mm.rope import RopeSpec
from vision_tools.generation import STOP_STRINGS


def test_export_loads_with_auto_classes_and_renders_the_same_chat(tmp_path, preset):
    from qwen_vl_utils import process_vision_info
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model, processor = load_model(preset)
    model.eval()
    family = family_of(model.config)
    out = str(tmp_path / "final")
    export_hf(None, model, processor, out, stage=0)
    hf_model = AutoModelForImageTextToText.from_pretrained(out).eval()
    hf_proc = AutoProcessor.from_pretrained(out)
    assert type(hf_model).__name__ == family.model_classes[model.config.model_type]
    assert type(hf_proc).__name__ == family.processor_class

    image = Image.new("RGB", (56, 56), (200, 30, 30))
    question = "What colour is the square?"
    # mmpost's side: the encoder and batched greedy generation of evaluation
    mine = [Message("user", [{"type": "image", "image": image}, {"type": "text", "text": question}])]
    encoder = ConversationEncoder(processor, rope=RopeSpec.from_config(model.config))
    sample = encoder.encode(mine, None, add_generation_prompt=True)
    ours = generate(model, processor, encoder, [mine], ".", max_new_tokens=6)[0]
    # lmms-eval's side: messages -> apply_chat_template, process_vision_info -> processor -> generate
    theirs = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}
    ]
    text = hf_proc.apply_chat_template(theirs, tokenize=False, add_generation_prompt=True)
    if family.patch_size == 14:  # Qwen2.5-VL: qwen-vl-utils' defaults
        images, _ = process_vision_info(theirs)
        batch = hf_proc(text=[text], images=images, padding=True, return_tensors="pt")
    else:  # lmms-eval's qwen3_vl: qwen-vl-utils sizes at patch 16 (32-px tokens), no second resize
        images, _ = process_vision_info(theirs, image_patch_size=family.patch_size)
        batch = hf_proc(text=[text], images=images, padding=True, do_resize=False, return_tensors="pt")
    assert torch.equal(batch["input_ids"][0], sample.input_ids)
    assert torch.allclose(batch["pixel_values"], sample.pixel_values)
    assert torch.equal(batch["image_grid_thw"], sample.image_grid_thw)
    with torch.no_grad():  # the same logits: transformers' own positions and forward, and mmpost's
        theirs_logits = hf_model(**batch).logits[0]
        ours_logits = model(**sample.model_inputs()).logits[0]
    assert (theirs_logits - ours_logits).abs().max() <= 1e-5
    with torch.no_grad():
        new = hf_model.generate(**batch, max_new_tokens=6, do_sample=False)[:, batch["input_ids"].shape[1] :]
    # the same greedy text, up to where mmpost's decoding stops (a stop string, as rollouts stop)
    theirs = hf_proc.batch_decode(new, skip_special_tokens=True)[0]
    assert theirs.startswith(ours) and (ours == theirs or any(s in ours for s in STOP_STRINGS)), (
        ours,
        theirs,
    )
