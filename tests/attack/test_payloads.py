"""The attack corpus, part 2: files that run code when read carelessly, in every place ember reads
a file a user may have downloaded.

Each pickle payload, unpickled, creates a sentinel file (through os.system, or exec of
open(...).write); each custom-code folder writes it when its .py is imported. For every case the
run must stop with exit code 2 and one line naming the file or folder, and the sentinel must not
exist, ever. test_payloads_are_live shows that each payload does run when loaded carelessly, so
a passing case means ember refused it, not that the payload was a dud.

Cases marked proc=True run as real `ember` processes; the rest through ember.cli.main here.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from attack_kit import (Env, Setup, custom_code_folder, make_env, params, previous_run, processes,  # noqa: F401
                        registry, reseal, run_case, run_in_process, torch_payload, train_args)

pytestmark = pytest.mark.slow
cases, case = registry()


# ---- load_from_checkpoint: a state dict in any of the formats users bring -----------------------
def _load_from(env: Env, path: Path) -> Setup:
    return Setup(train_args(env.tiny(load_from_checkpoint=str(path))), env.dir / "out", [str(path), "refused"])


@case(proc=True)
def load_from_checkpoint_bin(env: Env) -> Setup:
    return _load_from(env, torch_payload(env.dir / "weights.bin", env.sentinel, "shell"))


@case()
def load_from_checkpoint_pth(env: Env) -> Setup:
    return _load_from(env, torch_payload(env.dir / "weights.pth", env.sentinel, "write"))


@case()
def load_from_checkpoint_ckpt_legacy_pickle(env: Env) -> Setup:
    """The bare pickle stream (no zip) torch.save wrote before 1.6, still common in .ckpt files."""
    return _load_from(env, torch_payload(env.dir / "last.ckpt", env.sentinel, "shell", legacy=True))


@case()
def load_from_checkpoint_pt(env: Env) -> Setup:
    return _load_from(env, torch_payload(env.dir / "model.pt", env.sentinel, "write"))


def _folder_with_bin(env: Env) -> Path:
    """An HF model folder whose weights are a pytorch_model.bin payload (no safetensors)."""
    folder = env.dir / "hf_model"
    shutil.copytree(env.model, folder)
    (folder / "model.safetensors").unlink()
    torch_payload(folder / "pytorch_model.bin", env.sentinel, "shell")
    return folder


@case()
def load_from_checkpoint_hf_folder_bin(env: Env) -> Setup:
    folder = _folder_with_bin(env)
    return _load_from(env, folder)


# ---- model folders --------------------------------------------------------------------------------
@case(proc=True)
def model_folder_pytorch_model_bin(env: Env) -> Setup:
    folder = _folder_with_bin(env)
    keys = env.tiny(model_config=None, tokenizer_name_or_path=None, model_name_or_path=str(folder))
    return Setup(train_args(keys), env.dir / "out", ["model_name_or_path", str(folder), "refused"])


@case()
def generate_from_folder_with_pytorch_model_bin(env: Env) -> Setup:
    folder = _folder_with_bin(env)
    return Setup(["generate", str(folder), "--prompt", "hello", "--max_new_tokens", "2"], folder,
                 [str(folder), "refused"])


@case(proc=True)
def custom_code_new_model_type(env: Env) -> Setup:
    folder = custom_code_folder(env.model, env.dir / "custom", env.sentinel, "evil_llama")
    keys = env.tiny(model_config=None, model_name_or_path=str(folder))
    return Setup(train_args(keys), env.dir / "out", [str(folder / "config.json"), "auto_map", "trust_remote_code"])


@case()
def custom_code_known_model_type(env: Env) -> Setup:
    """model_type llama with an auto_map: transformers would quietly load its own Llama instead
    of the class the folder names; ember refuses the folder rather than train another model."""
    folder = custom_code_folder(env.model, env.dir / "custom", env.sentinel, "llama")
    keys = env.tiny(model_config=None, model_name_or_path=str(folder))
    return Setup(train_args(keys), env.dir / "out", [str(folder / "config.json"), "auto_map", "trust_remote_code"])


@case()
def custom_code_in_tokenizer(env: Env) -> Setup:
    import json
    folder = env.dir / "tokenizer"
    shutil.copytree(env.tokenizer, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(f"open({str(env.sentinel)!r}, 'w').write('custom code ran')\n"
                                    "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n")
    keys = env.tiny(tokenizer_name_or_path=str(folder))
    return Setup(train_args(keys), env.dir / "out", [str(folder / "tokenizer_config.json"), "trust_remote_code"])


def _adapter(env: Env) -> Path:
    """A PEFT LoRA adapter folder whose adapter_model.bin is a payload."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    folder = env.dir / "adapter"
    model = AutoModelForCausalLM.from_pretrained(env.model)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(folder, safe_serialization=False)
    torch_payload(folder / "adapter_model.bin", env.sentinel, "write")
    return folder


@case()
def lora_adapter_bin(env: Env) -> Setup:
    folder = _adapter(env)
    keys = env.tiny(model_config=None, model_name_or_path=str(env.model), finetuning_type="lora",
                    adapter_name_or_path=str(folder))
    return Setup(train_args(keys), env.dir / "out", ["adapter_name_or_path", str(folder), "refused"])


@case()
def export_lora_adapter_bin(env: Env) -> Setup:
    folder = _adapter(env)
    out = env.dir / "merged"
    args = ["export", "--model_name_or_path", str(env.model), "--adapter_name_or_path", str(folder),
            "--export_dir", str(out)]
    return Setup(args, out, ["adapter_name_or_path", str(folder), "refused"])


# ---- a checkpoint folder to resume from ------------------------------------------------------------
def _resume_with(env: Env, name: str) -> Setup:
    """A copy of a real run whose newest checkpoint has `name` replaced by a payload (and its
    marker entry rewritten to match, so the payload is what a reader meets), resumed by path."""
    out = env.dir / "out"
    shutil.copytree(env.previous_run, out)
    checkpoint = out / "checkpoint-2"
    torch_payload(checkpoint / name, env.sentinel, "shell")
    reseal(checkpoint, name)
    keys = env.tiny(output_dir=str(out), max_steps=3, save_steps=1, resume_from_checkpoint=str(checkpoint))
    return Setup(train_args(keys), out, [str(checkpoint)])


@case(proc=True)
def resume_optimizer_pt(env: Env) -> Setup:
    return _resume_with(env, "optimizer.pt")


@case()
def resume_rng_state_pt(env: Env) -> Setup:
    return _resume_with(env, "rng_state_0.pt")


# ---- running the corpus ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", params(cases))
def test_payload_never_runs(name, make_env, processes, run_in_process):  # noqa: F811
    run_case(cases[name], name, make_env, processes, run_in_process)


@pytest.mark.parametrize("kind", ["shell", "write", "legacy", "custom code"])
def test_payloads_are_live(kind, tiny_model_dir, tmp_path):
    """The control: loaded the careless way, each payload does create its sentinel."""
    sentinel = tmp_path / "PAYLOAD-RAN"
    if kind == "custom code":
        from transformers import AutoConfig
        folder = custom_code_folder(tiny_model_dir, tmp_path / "custom", sentinel, "evil_llama")
        AutoConfig.from_pretrained(folder, trust_remote_code=True)
    else:
        path = torch_payload(tmp_path / "payload.bin", sentinel, "write" if kind == "write" else "shell",
                             legacy=kind == "legacy")
        torch.load(path, weights_only=False)
    assert sentinel.exists()
