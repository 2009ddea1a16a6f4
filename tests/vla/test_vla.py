"""The VLA trainer with Spatial Forcing on the tiny model (CPU): records and their errors, the
frozen teacher, precomputed vs live features, learning, export and predict_actions, the CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from alignment.infra.metrics import read_metrics
from alignment.train import build_config
from alignment.vla import VLATrainer
from mm.dataset import DataError
from mm.encode import ConversationEncoder
from mm.rope import RopeSpec
from mm.visual import VisualConfig
from tests.testing_utils import require_deepspeed
from vla.data import VLADataset, VLASample, collate, view_messages
from vla.model import HEADS, VLAHeads, VLAModel
from vla.policy import PREDICT_INPUTS
from vla.spatial.align import AlignProjector
from vla.spatial.features import FeatureStore, write_features
from vla.spatial.teacher import RandomTeacher, build_teacher
from vla.synth import write_vla_synth

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VLA_YAML = os.path.join(ROOT, "configs", "spatial_forcing", "vla.yaml")
SF_YAML = os.path.join(ROOT, "configs", "spatial_forcing", "vla_sf.yaml")
PAPER_YAML = os.path.join(ROOT, "configs", "spatial_forcing", "paper.yaml")


@pytest.fixture(scope="session")
def vla_data(tmp_path_factory):
    return write_vla_synth(str(tmp_path_factory.mktemp("vla")), n=32, n_test=4, seed=0)


@pytest.fixture(scope="session")
def vla_encoder(tiny):
    model, processor = tiny
    return ConversationEncoder(
        processor, VisualConfig(max_pixels=224 * 224), RopeSpec.from_config(model.config)
    )


def _records(path):
    return [json.loads(x) for x in open(path)]


def _write(path, recs):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    return str(path)


def test_records_and_their_errors(vla_data, vla_encoder, tmp_path):
    from mmpost import main

    assert main(["data", "validate", vla_data["train"]]) == 0  # VLA records need no assistant turn
    ds = VLADataset(vla_data["train"], vla_encoder, 8, 7, 2)
    s = ds[0]
    assert ds.proprio_dim == 4 and s.actions.shape == (8, 7) and len(s.views) == 2
    assert s.slot_ids[-9:].tolist() == list(range(9))  # proprio slot, then 8 action queries
    assert s.actions.abs().max() <= 1  # q01/q99 -> [-1, 1]
    rec = _records(vla_data["train"])[0]
    base = os.path.dirname(vla_data["train"])
    for m in rec["messages"]:
        for it in m["content"]:
            if it.get("type") == "image":
                it["image"] = os.path.join(base, it["image"])
    video = json.loads(json.dumps(rec))  # one view and one video: 2 visual items, within max_views
    video["messages"][0]["content"][1] = {
        "type": "video",
        "video": [rec["messages"][0]["content"][1]["image"]] * 2,
    }
    bad = [
        ({k: v for k, v in rec.items() if k != "actions"}, "missing_actions", "no 'actions'"),
        ({**rec, "actions": rec["actions"][:5]}, "bad_actions", "5 x 7, the config wants 8 x 7"),
        ({**rec, "actions": [[1, "x"]] * 8}, "bad_actions", "finite numbers"),
        ({**rec, "proprio": [1, None]}, "bad_proprio", "proprio"),
        (video, "bad_views", "a video item; a VLA view is one image"),
    ]
    for i, (r, code, text) in enumerate(bad):
        path = _write(tmp_path / f"bad{i}.jsonl", [rec, r])
        with pytest.raises(DataError, match=rf"bad{i}.jsonl:2: \[{code}\].*{text}"):
            VLADataset(path, vla_encoder, 8, 7, 2)
    gone = json.loads(json.dumps(rec))
    gone["messages"][0]["content"][1]["image"] = "nowhere.png"
    ds = VLADataset(_write(tmp_path / "img.jsonl", [rec, gone]), vla_encoder, 8, 7, 2)
    with pytest.raises(DataError, match=r"img.jsonl:2: \[missing_image\].*nowhere.png"):
        ds[1]


def _model(tiny, alpha=0.5, d_t=32):
    model, _ = tiny
    torch.manual_seed(0)
    d = model.config.text_config.hidden_size
    return VLAModel(model, VLAHeads(d, 8, 7, 4), AlignProjector(d, d_t), layer=1, alpha=alpha)


def test_precomputed_features_give_the_live_loss(tiny, vla_data, vla_encoder, tmp_path):
    ds = VLADataset(vla_data["train"], vla_encoder, 8, 7, 2)
    teacher = build_teacher("random")
    out = str(tmp_path / "feats")
    meta = write_features(vla_data["train"], out, teacher, batch_size=5, progress=False)
    assert (meta["teacher"], meta["grid"], meta["dim"], len(meta["ids"])) == ("random", [7, 7], 32, 32)
    store = FeatureStore(out)
    store.check("random", 56, vla_data["train"])
    samples = [ds[i] for i in (3, 0, 7, 12)]
    pad = tiny[1].tokenizer.pad_token_id
    live = collate(samples, pad, 2, teacher_size=teacher.image_size)
    live["teacher_feats"] = teacher(live.pop("teacher_images"), live["view_mask"])
    pre = collate(samples, pad, 2, features=store)
    vla = _model(tiny)
    with torch.no_grad():
        a, n, sa = vla(**live)
        b, _, sb = vla(**pre)
    assert n == 4 and sa["align"] > 0
    assert abs(float(a) - float(b)) < 1e-6 and abs(float(sa["align"]) - float(sb["align"])) < 1e-6
    with pytest.raises(ValueError, match="teacher 'random', the config asks for 'timm:vit_small"):
        store.check("timm:vit_small", 0, vla_data["train"])
    with pytest.raises(ValueError, match="image size 56, the config asks for 112"):
        store.check("random", 112, vla_data["train"])


def test_feature_store_records_data_and_weights(vla_data, tmp_path):
    """meta.json pins the data file and the teacher weights by sha256: training refuses an edited
    data file (same ids, other actions) and another weights file, with the command that recomputes."""
    from vla.spatial.features import file_sha256

    recs = _records(vla_data["train"])[:3]
    data = _write(tmp_path / "d.jsonl", recs)
    os.symlink(os.path.join(os.path.dirname(vla_data["train"]), "images"), tmp_path / "images")
    weights, other = tmp_path / "w.bin", tmp_path / "other.bin"
    weights.write_bytes(b"teacher weights")
    other.write_bytes(b"teacher wEights")  # same size, other contents
    teacher = build_teacher("random")
    teacher.weights = str(weights)  # as a timm / VGGT teacher records its file
    out = str(tmp_path / "feats")
    meta = write_features(data, out, teacher, progress=False)
    assert meta["data_sha256"] == file_sha256(data)
    assert meta["teacher_weights"] == {
        "path": str(weights),
        "size": 15,
        "sha256": "90d25392a0559aa17e21775e238a703a195a1747d8f67a2c5f8c82a86ece5ccd",
    }
    store = FeatureStore(out)
    store.check("random", 56, data, str(weights))
    store.check("random", 56, data)  # a run reading features need not name the weights
    with pytest.raises(
        ValueError, match=r"teacher weights .*w.bin, which differ from align.teacher_weights=.*other.bin"
    ):
        store.check("random", 56, data, str(other))
    recs[1]["actions"][0][0] += 1.0  # same ids, other contents
    with pytest.raises(
        ValueError, match=r"features of data file .*d.jsonl, whose contents differ.*recompute: mmpost"
    ):
        store.check("random", 56, _write(tmp_path / "d.jsonl", recs))


def test_write_features_replaces_the_folder_atomically(vla_data, tmp_path):
    recs = _records(vla_data["train"])[:3]
    os.symlink(os.path.join(os.path.dirname(vla_data["train"]), "images"), tmp_path / "images")
    out = tmp_path / "feats"
    teacher = build_teacher("random")
    write_features(_write(tmp_path / "three.jsonl", recs), str(out), teacher, batch_size=1, progress=False)
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}

    class Failing(RandomTeacher):
        calls = 0

        def features(self, images):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("out of memory")
            return super().features(images)

    two = _write(tmp_path / "two.jsonl", recs[:2])
    with pytest.raises(RuntimeError, match="out of memory"):
        write_features(two, str(out), Failing(), batch_size=1, progress=False)
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before  # untouched
    write_features(two, str(out), teacher, batch_size=1, progress=False)
    assert sorted(os.listdir(out)) == ["000000.pt", "000001.pt", "meta.json"]  # no stale 000002.pt
    assert json.loads((out / "meta.json").read_text())["ids"] == [r["id"] for r in recs[:2]]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep")
    with pytest.raises(ValueError, match="not a teacher-features folder"):
        write_features(two, str(tmp_path / "notes"), teacher, progress=False)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep"


def test_absent_views_are_masked(tiny, vla_data, vla_encoder, tmp_path):
    """A one-view sample next to two-view ones: only its present view's tokens are aligned."""
    recs = _records(vla_data["train"])[:2]
    recs[1]["messages"][0]["content"].pop(1)  # drop the wrist view
    path = _write(tmp_path / "d.jsonl", recs)
    os.symlink(os.path.join(os.path.dirname(vla_data["train"]), "images"), tmp_path / "images")
    ds = VLADataset(path, vla_encoder, 8, 7, 2)
    teacher = build_teacher("random")
    batch = collate([ds[0], ds[1]], tiny[1].tokenizer.pad_token_id, 2, teacher_size=56)
    assert batch["view_mask"].tolist() == [[True, True], [True, False]]
    batch["teacher_feats"] = teacher(batch.pop("teacher_images"), batch["view_mask"])
    vla = _model(tiny)
    with torch.no_grad():
        _, n, stats = vla(**batch)
    assert float(stats["align_tokens"]) == 16 * 2 + 16  # 112 x 112 views: 4 x 4 merged tokens each


@require_deepspeed
def test_sf_trains_reduces_both_losses_teacher_frozen(vla_data, tmp_path):
    """24 steps of vla_sf.yaml (8 samples a step, 6 epochs of 32 scenes, seeded). Untrained, the
    L1 on normalised actions is ~0.47 and L_align ~1.1 (random projector: cosine ~ 0); measured
    after 24 steps: ~0.26 and ~0.21. The asserted margins (action < 0.8x, align < 0.5x the first
    steps) leave room for thread-count noise and fail when either loss does not learn."""
    out = str(tmp_path / "sf")
    cfg = build_config(
        SF_YAML,
        [
            f"data.train={vla_data['train']}",
            "train.max_steps=24",
            "optim.warmup_ratio=0",
            "train.log_every=1",
        ],
        output_dir=out,
    )
    trainer = VLATrainer(cfg)
    summary = trainer.run()
    m = read_metrics(out)
    assert len(m) == 24
    first = {k: np.mean([x[k] for x in m[:3]]) for k in ("m_action_l1", "m_align")}
    last = {k: np.mean([x[k] for x in m[-5:]]) for k in ("m_action_l1", "m_align")}
    assert last["m_action_l1"] < 0.8 * first["m_action_l1"], (first, last)
    assert last["m_align"] < 0.5 * first["m_align"], (first, last)
    # the teacher: frozen, in eval mode, outside the trained module, bit-identical to its seeded init
    teacher = trainer.state.teacher
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    trained = {id(p) for p in trainer.vla.parameters()}
    assert not any(id(p) in trained for p in teacher.parameters())
    fresh = RandomTeacher().state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in teacher.state_dict().items())
    x = torch.rand(1, 2, 3, 56, 56, requires_grad=True)
    y = teacher(x, torch.ones(1, 2, dtype=torch.bool))
    assert y.grad_fn is None and not y.requires_grad
    # export: backbone + heads + stats; the projector is dropped
    final = summary["model"]
    from safetensors import safe_open

    for name in ("model.safetensors", HEADS):
        with safe_open(os.path.join(final, name), "pt") as f:
            assert not any("projector" in k for k in f.keys())
    assert os.path.isfile(os.path.join(out, "norm_stats.json")) and os.path.isfile(
        os.path.join(final, "norm_stats.json")
    )


@require_deepspeed
def test_vla_yaml_trains_and_predicts_from_export(vla_data, tmp_path):
    from vla import VLAPolicy

    out = str(tmp_path / "vla")
    cfg = build_config(VLA_YAML, [f"data.train={vla_data['train']}", "train.max_steps=4"], output_dir=out)
    trainer = VLATrainer(cfg)
    summary = trainer.run()
    assert trainer.state.teacher is None and trainer.vla.projector is None
    assert all("m_align" not in x for x in read_metrics(out))
    policy = VLAPolicy.from_pretrained(summary["model"])
    rec = _records(vla_data["test"])[0]
    base = os.path.dirname(vla_data["test"])
    images = [
        os.path.join(base, it["image"]) for it in rec["messages"][0]["content"] if it.get("type") == "image"
    ]
    text = rec["messages"][0]["content"][-1]["text"]
    actions = policy.predict_actions(images, text, rec["proprio"])
    assert actions.shape == (8, 7) and np.isfinite(actions).all()
    # the exported policy predicts what the trained module predicts (normalised, then de-normalised)
    ds = trainer.dataset
    sample = ds.vla.encode(
        view_messages(images, text), None, ds.stats.normalize_proprio(np.asarray(rec["proprio"]))
    )
    batch = collate([VLASample(*sample)], trainer.processor.tokenizer.pad_token_id, 2)
    with torch.no_grad():
        y = trainer.vla.predict(**{k: batch[k] for k in PREDICT_INPUTS})[0].numpy()
    assert np.allclose(ds.stats.denormalize_actions(y), actions, atol=1e-5)
    with pytest.raises(ValueError, match="proprio has 2 values, the model was trained with 4"):
        policy.predict_actions(images, text, [0.0, 0.0])
    assert json.load(open(os.path.join(summary["model"], "vla.json")))["max_views"] == 2
    for views in ([], images + images[:1]):
        with pytest.raises(
            ValueError, match=rf"{len(views)} view\(s\) given; the model was trained with 1..2"
        ):
            policy.predict_actions(views, text, rec["proprio"])


def test_cli_vla_synth_is_deterministic_and_features_write(tmp_path):
    from mmpost import main

    for name in ("a", "b"):
        assert (
            main(["data", "vla-synth", str(tmp_path / name), "--n", "3", "--n-test", "1", "--seed", "5"]) == 0
        )
    assert open(tmp_path / "a" / "train.jsonl").read() == open(tmp_path / "b" / "train.jsonl").read()
    assert (tmp_path / "a" / "images" / "train_00002_wrist.png").read_bytes() == (
        tmp_path / "b" / "images" / "train_00002_wrist.png"
    ).read_bytes()
    feats = tmp_path / "feats"
    assert main(["data", "teacher-features", str(tmp_path / "a" / "train.jsonl"), str(feats)]) == 0
    assert sorted(os.listdir(feats)) == ["000000.pt", "000001.pt", "000002.pt", "meta.json"]
    assert torch.load(feats / "000001.pt").shape == (2, 7, 7, 32)
    assert (
        main(
            ["data", "teacher-features", str(tmp_path / "a" / "train.jsonl"), str(feats), "--teacher", "nope"]
        )
        == 2
    )


def test_timm_teacher_loads_local_weights(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32).eval()
    path = str(tmp_path / "vit.safetensors")
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    teacher = build_teacher("timm:vit_tiny_patch16_224", path, image_size=32)
    assert (teacher.spec, teacher.dim, teacher.image_size) == ("timm:vit_tiny_patch16_224", 192, 32)
    assert teacher.weights == path  # recorded in precomputed features
    x = torch.rand(1, 2, 3, 32, 32)
    y = teacher(x, torch.ones(1, 2, dtype=torch.bool))
    assert y.shape == (1, 2, 2, 2, 192)
    with torch.no_grad():
        want = ref.forward_features((x[0] - teacher.mean) / teacher.std)[:, ref.num_prefix_tokens :]
    assert torch.allclose(y[0].flatten(1, 2), want, atol=1e-5)
    with pytest.raises(ValueError, match="needs its weights as a local file"):
        build_teacher("timm:vit_tiny_patch16_224", None)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        build_teacher("timm:vit_tiny_patch16_224", str(tmp_path / "missing.pth"))


def test_vggt_teacher_without_package_is_a_clear_error():
    from mm.imports import MissingDependency, is_available

    if is_available("vggt"):
        pytest.skip("vggt is installed")
    with pytest.raises(MissingDependency, match="vggt"):
        build_teacher("vggt", "weights.pt")
    with pytest.raises(ValueError, match="unknown teacher 'dino'"):
        build_teacher("dino")


@require_deepspeed
def test_resume_continues_exactly(vla_data, tmp_path):
    """A run stopped after step 2 (its last checkpoint) and resumed gives the losses of an
    uninterrupted run: heads, projector, optimizer, data position and RNG are all restored."""
    import shutil

    from alignment.train import train

    common = [f"data.train={vla_data['train']}", "data.micro_batch_size=4", "train.max_steps=4"]
    common += ["optim.warmup_ratio=0", "train.export=false", "train.save_every=2"]
    train(SF_YAML, common, output_dir=str(tmp_path / "full"))
    train(SF_YAML, common, output_dir=str(tmp_path / "cut"))
    shutil.rmtree(tmp_path / "cut" / "checkpoint-000004")  # as if killed before the last save
    train(SF_YAML, common, output_dir=str(tmp_path / "cut"))
    full, cut = read_metrics(str(tmp_path / "full")), read_metrics(str(tmp_path / "cut"))
    assert [m["step"] for m in cut] == [1, 2, 3, 4]
    for a, b in zip(full, cut):
        assert a["loss"] == b["loss"] and a["m_align"] == b["m_align"]


def _test_views(vla_data):
    rec = _records(vla_data["test"])[0]
    base = os.path.dirname(vla_data["test"])
    images = [
        os.path.join(base, it["image"]) for it in rec["messages"][0]["content"] if it.get("type") == "image"
    ]
    return images, rec["messages"][0]["content"][-1]["text"], rec["proprio"]


@require_deepspeed
def test_zero3_export_holds_only_the_backbone(vla_data, tiny, tmp_path):
    """ZeRO-3 (one process): model.safetensors has exactly the keys transformers writes for the
    tiny model (no heads, projector or second copy of the decoder layers), and the export predicts."""
    from safetensors import safe_open

    from vla import VLAPolicy

    out = str(tmp_path / "z3")
    overrides = [f"data.train={vla_data['train']}", "train.max_steps=2", "train.deepspeed=zero3"]
    summary = VLATrainer(build_config(SF_YAML, overrides, output_dir=out)).run()
    ref = str(tmp_path / "ref")
    tiny[0].save_pretrained(ref, safe_serialization=True)
    with safe_open(os.path.join(ref, "model.safetensors"), "pt") as f:
        want = set(f.keys())
    with safe_open(os.path.join(summary["model"], "model.safetensors"), "pt") as f:
        assert set(f.keys()) == want
    images, text, proprio = _test_views(vla_data)
    actions = VLAPolicy.from_pretrained(summary["model"]).predict_actions(images, text, proprio)
    assert actions.shape == (8, 7) and np.isfinite(actions).all()


@require_deepspeed
def test_frozen_backbone_trains_only_the_heads(vla_data, synth, tmp_path):
    """model.freeze of every part: the heads train (the backbone's groups are empty, not an error),
    the exported backbone is bit-identical to the base model."""
    from mm.loading import load_model

    class Watched(VLATrainer):
        def build_module(self):
            module = super().build_module()
            self.initial = {k: v.clone() for k, v in self.heads.state_dict().items()}
            return module

    out = str(tmp_path / "frozen")
    overrides = [
        f"data.train={vla_data['train']}",
        "train.max_steps=2",
        "model.freeze=[vision_tower,merger,language_model]",
    ]
    trainer = Watched(build_config(VLA_YAML, overrides, output_dir=out))
    summary = trainer.run()
    heads = trainer.heads.state_dict()
    assert all(not torch.equal(heads[k], v) for k, v in trainer.initial.items())
    exported, _ = load_model(summary["model"])
    base, _ = load_model("tiny")
    assert all(torch.equal(p, q) for p, q in zip(exported.parameters(), base.parameters()))
    # SFT with everything frozen still stops with the clear message
    from alignment.train import train

    sft_yaml = os.path.join(ROOT, "configs", "quickstart", "sft.yaml")
    with pytest.raises(ValueError, match="no trainable parameters: everything is frozen"):
        train(
            sft_yaml,
            [f"data.train={synth['train']}", "model.freeze=[vision_tower,merger,language_model]"],
            output_dir=str(tmp_path / "sft"),
        )


def test_head_groups_lr_zero_and_no_decay_on_queries(vla_data):
    """action.lr_heads=0 is a learning rate, not 'unset'; action queries get no weight decay."""
    overrides = [f"data.train={vla_data['train']}", "action.lr_heads=0", "optim.weight_decay=0.1"]
    trainer = VLATrainer(build_config(SF_YAML, overrides))
    trainer.heads = VLAHeads(16, 8, 7, 4)
    trainer.vla = VLAModel.__new__(VLAModel)
    torch.nn.Module.__init__(trainer.vla)
    trainer.vla.projector = AlignProjector(16, 32)
    groups = {g["name"]: g for g in trainer.extra_param_groups()}
    assert [g["lr"] for g in groups.values()] == [0.0, 0.0]
    decay = {id(p) for p in groups["vla_heads"]["params"]}
    rest = {id(p) for p in groups["vla_heads_no_decay"]["params"]}
    h, pr = trainer.heads, trainer.vla.projector
    want_decay = [
        h.proprio_proj[0],
        h.proprio_proj[2],
        h.action_head[1],
        h.action_head[3],
        pr.net[1],
        pr.net[3],
    ]
    assert decay == {id(m.weight) for m in want_decay}
    assert id(h.action_queries) in rest and groups["vla_heads_no_decay"]["weight_decay"] == 0.0
    assert groups["vla_heads"]["weight_decay"] == 0.1
    assert len(decay) + len(rest) == len(list(h.parameters())) + len(list(pr.parameters()))


def test_teacher_width_must_divide_by_4(vla_data, monkeypatch):
    import alignment.vla as vla_trainer

    monkeypatch.setattr(vla_trainer, "build_teacher", lambda *a, **k: RandomTeacher(dim=30))
    trainer = VLATrainer(build_config(SF_YAML, [f"data.train={vla_data['train']}"]))
    with pytest.raises(ValueError, match="30-d features; .* divisible by 4"):
        trainer.setup("cpu")


def test_vggt_weights_are_checked(tmp_path, monkeypatch):
    """A weights file without the aggregator's keys is an error naming the file and the keys
    (not a silently random teacher); the heads may be absent (they are never run)."""
    import sys
    import types

    import vla.spatial.teacher as teacher_mod

    class FakeVGGT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.aggregator = torch.nn.Linear(3, 4)
            self.camera_head = torch.nn.Linear(4, 2)

    fake = types.ModuleType("vggt.models.vggt")
    fake.VGGT = FakeVGGT
    for name in ("vggt", "vggt.models"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "vggt.models.vggt", fake)
    monkeypatch.setattr(teacher_mod, "is_available", lambda name: True)
    ref = FakeVGGT()
    good = str(tmp_path / "vggt.pt")
    torch.save({k: v for k, v in ref.state_dict().items() if k.startswith("aggregator.")}, good)
    teacher = build_teacher("vggt", good)
    assert torch.equal(teacher.model.aggregator.weight, ref.aggregator.weight)
    wrong = str(tmp_path / "dino.pt")
    torch.save({"blocks.0.weight": torch.zeros(4, 3), "camera_head.weight": torch.zeros(2, 4)}, wrong)
    with pytest.raises(
        ValueError, match=r"dino.pt does not fit VGGT: 2 aggregator weights missing \(aggregator.weight"
    ):
        build_teacher("vggt", wrong)


@pytest.mark.parametrize("shift", [0, 1])
def test_views_of_different_shapes_pair_with_their_own_targets(tiny, vla_encoder, shift):
    """Non-square views of different sizes, in either order: L_align equals a hand loop over each
    (sample, view) that takes the view's tokens (with ``shift_student``: the hidden states one
    position later, as the released gain_feat_1move), its merged grid (rows = height / 28) and its
    own teacher grid resampled to it; swapping the two views' teacher features changes the loss."""
    import torch.nn.functional as F

    from tests.conftest import solid
    from vla.data import VLAEncoder
    from vla.spatial.align import alignment_targets

    wide, tall = solid(84, 56), solid(56, 112, (30, 200, 30))  # merged grids 2 x 3 and 4 x 2
    grid = {id(wide): (2, 3), id(tall): (4, 2)}
    enc = VLAEncoder(vla_encoder, 8, 4)
    views = [[wide, tall], [tall, wide]]
    samples = []
    for ims in views:
        e, slots, prop, v = enc.encode(view_messages(ims, "go"), None, np.zeros(4, np.float32))
        samples.append(VLASample(e, slots, prop, v, torch.zeros(8, 7)))
    batch = collate(samples, tiny[1].tokenizer.pad_token_id, 2)
    assert batch["image_grid_thw"].tolist() == [[1, 4, 6], [1, 8, 4], [1, 8, 4], [1, 4, 6]]
    torch.manual_seed(1)
    feats = torch.randn(2, 2, 5, 5, 32)  # [B, V, h_t, w_t, d_t]
    vla = _model(tiny)
    vla.shift_student = bool(shift)
    with torch.no_grad():
        _, _, stats = vla(**batch, teacher_feats=feats)
        keys = ("attention_mask", "position_ids", "pixel_values", "image_grid_thw")
        _, h_l = vla.encode(
            batch["input_ids"],
            batch["slot_ids"],
            batch["proprio"],
            capture=True,
            **{k: batch[k] for k in keys},
        )
        want = []
        for b, ims in enumerate(views):
            pos = (batch["input_ids"][b] == tiny[0].config.image_token_id).nonzero().flatten().tolist()
            cos, start = [], 0
            for v, im in enumerate(ims):
                gh, gw = grid[id(im)]
                pred = vla.projector(h_l[b, [p + shift for p in pos[start : start + gh * gw]]]).float()
                cos.append(F.cosine_similarity(pred, alignment_targets(feats[b, v], (gh, gw), 0.1), dim=-1))
                start += gh * gw
            assert start == len(pos)
            want.append(1 - torch.cat(cos).mean())
        assert float(stats["align"]) == pytest.approx(float(sum(want)), abs=1e-5)
        assert float(stats["align_tokens"]) == 2 * (6 + 8)
        _, _, swapped = vla(**batch, teacher_feats=feats[:, [1, 0]])
    assert abs(float(swapped["align"]) - float(stats["align"])) > 1e-3


def test_sft_refuses_vla_records(vla_data, encoder):
    """A VLA record (actions, no assistant turn) passes `mmpost data validate` for the VLA trainer,
    but SFT would train zero tokens on it: its dataset stops with file:line, or skips and counts."""
    from mm.dataset import RecordDataset

    with pytest.raises(DataError, match=r"train.jsonl:1: \[no_assistant\].*SFT would train nothing"):
        RecordDataset(vla_data["train"], encoder)
    ds = RecordDataset(vla_data["train"], encoder, on_error="skip")
    assert len(ds) == 0 and ds.skipped == 32


def test_mlp_resnet_head_is_openvla_ofts():
    """LayerNorm -> Linear -> ReLU, two pre-norm residual blocks h + ReLU(W LN(h) + b), LayerNorm ->
    Linear: recomputed with torch.nn.functional from the module's own weights."""
    import torch.nn.functional as F

    from vla.model import MLPResNet

    torch.manual_seed(0)
    heads = VLAHeads(16, 8, 7, 4, hidden=12, head="mlp_resnet")
    head = heads.action_head
    assert isinstance(head, MLPResNet) and len(head.blocks) == 2
    for m in head.modules():  # non-trivial norms, so a missing or misplaced LayerNorm shows
        if isinstance(m, torch.nn.LayerNorm):
            torch.nn.init.normal_(m.weight)
            torch.nn.init.normal_(m.bias)

    def ln(x, m):
        return F.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)

    x = torch.randn(3, 8, 16)
    h = F.relu(F.linear(ln(x, head.inp[0]), head.inp[1].weight, head.inp[1].bias))
    for blk in head.blocks:
        h = h + F.relu(F.linear(ln(h, blk[0]), blk[1].weight, blk[1].bias))
    want = F.linear(ln(h, head.out[0]), head.out[1].weight, head.out[1].bias)
    assert torch.allclose(head(x), want, atol=1e-6) and want.shape == (3, 8, 7)
    assert heads.config()["head"] == "mlp_resnet" and heads.config()["head_blocks"] == 2
    with pytest.raises(ValueError, match="action.head must be 'mlp' or 'mlp_resnet'"):
        VLAHeads(16, 8, 7, 4, head="resnet")


def test_paper_yaml_trains_with_lora_step_decay_and_exports_the_resnet_head(vla_data, tmp_path):
    """configs/spatial_forcing/paper.yaml: the released settings, and a short run of them: LoRA r=32
    on the language model, the MLP-ResNet head (exported and reloaded by VLAPolicy), the shifted
    student, and the step schedule (lr 5e-4, x0.1 from decay_step on)."""
    from vla import VLAPolicy
    from vla.model import MLPResNet

    cfg = build_config(PAPER_YAML)
    assert (cfg.optim.lr, cfg.optim.schedule, cfg.optim.decay_step, cfg.optim.decay_gamma) == (
        5e-4,
        "step",
        100_000,
        0.1,
    )
    assert cfg.train.max_steps == 150_000 and cfg.optim.warmup_ratio == 0
    assert (cfg.model.lora_r, cfg.model.lora_alpha, cfg.action.head, cfg.align.shift_student) == (
        32,
        16,
        "mlp_resnet",
        True,
    )
    assert (cfg.align.alpha, cfg.align.pos_scale, cfg.action.chunk, cfg.action.dims) == (0.5, 0.1, 8, 7)
    out = str(tmp_path / "paper")
    over = [f"data.train={vla_data['train']}", "train.max_steps=3", "optim.decay_step=2", "train.log_every=1"]
    trainer = VLATrainer(build_config(PAPER_YAML, over, output_dir=out))
    summary = trainer.run()
    # the lr logged after optimizer step k is the scheduler's next one: that of 0-based step k
    assert [x["lr"] for x in read_metrics(out)] == pytest.approx([5e-4, 5e-5, 5e-5])
    assert trainer.model.peft_config["default"].r == 32  # trained through adapters (merged at export)
    assert all(m > 0 for m in (read_metrics(out)[0]["m_align"], read_metrics(out)[0]["m_action_l1"]))
    policy = VLAPolicy.from_pretrained(summary["model"])
    head = policy.model.heads.action_head
    assert isinstance(head, MLPResNet)
    trained = trainer.heads.action_head.state_dict()
    assert all(torch.equal(v.float(), trained[k].float().cpu()) for k, v in head.state_dict().items())
