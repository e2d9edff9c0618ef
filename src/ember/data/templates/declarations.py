"""The chat templates, by LLaMA-Factory 0.9.5's names, each a declaration of its slots.

Adding a template is one `declare(...)` call. What is left out takes LLaMA-Factory's defaults:
user and system "{{content}}"; assistant "{{content}}" then EOS (no EOS with efficient_eos);
observation like user; a function call written like an assistant turn in the "default" tool
format. `function_format` / `tool_format` name a format of tools.py.
"""
from __future__ import annotations

from .slots import BOS, EOS, Token, slots
from .template import FUSED_SYSTEM, REASONING, Template, default_answer_slots

TEMPLATES: dict[str, Template] = {}


def declare(name: str, *, user="{{content}}", assistant=None, system="{{content}}", observation=None,
            function=None, function_format="default", prefix=(), efficient_eos=False, **options) -> None:
    assistant = slots(assistant) if assistant is not None else default_answer_slots(efficient_eos)
    TEMPLATES[name] = Template(
        name=name, user=slots(user), assistant=assistant, system=slots(system),
        observation=slots(observation if observation is not None else user),
        function=slots(function) if function is not None else assistant, function_format=function_format,
        prefix=slots(prefix), efficient_eos=efficient_eos, **options)


CHATML_USER = "<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n"
CHATML_ANSWER = "{{content}}<|im_end|>\n"
CHATML_SYSTEM = "<|im_start|>system\n{{content}}<|im_end|>\n"
CHATML_TOOL_RESULT = "<|im_start|>tool\n{{content}}<|im_end|>\n<|im_start|>assistant\n"
QWEN_TOOL_RESULT = "<|im_start|>user\n<tool_response>\n{{content}}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
GEMMA_USER = "<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n"
GEMMA_TOOL_RESULT = "<start_of_turn>tool\n{{content}}<end_of_turn>\n<start_of_turn>model\n"
LLAMA3_SYSTEM = "<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>"
LLAMA3_USER = ("<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n")
LLAMA3_TOOL_RESULT = ("<|start_header_id|>ipython<|end_header_id|>\n\n{{content}}<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n")
INTERNLM_SYSTEM = (
    "You are an AI assistant whose name is InternLM (书生·浦语).\n"
    "- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI Laboratory "
    "(上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
    "- InternLM (书生·浦语) can understand and communicate fluently in the language chosen by the user such "
    "as English and 中文.")

# ---- generic formats --------------------------------------------------------------------------
declare("empty", assistant="{{content}}")
declare("default", user=("Human: {{content}}", EOS, "\nAssistant:"), assistant=("{{content}}", EOS, "\n"),
        system=("System: {{content}}", EOS, "\n"), replace_jinja_template=True)
declare("alpaca", user="### Instruction:\n{{content}}\n\n### Response:\n", assistant=("{{content}}", EOS, "\n\n"),
        default_system="Below is an instruction that describes a task. Write a response that appropriately "
                       "completes the request.\n\n", replace_jinja_template=True)
declare("vicuna", user="USER: {{content}} ASSISTANT:",
        default_system="A chat between a curious user and an artificial intelligence assistant. The assistant "
                       "gives helpful, detailed, and polite answers to the user's questions.",
        replace_jinja_template=True)
declare("chatml", user=CHATML_USER, assistant=CHATML_ANSWER, system=CHATML_SYSTEM, observation=CHATML_TOOL_RESULT,
        stop_words=("<|im_end|>", "<|im_start|>"), replace_eos=True, replace_jinja_template=True)
declare("chatml_de", user=CHATML_USER, assistant=CHATML_ANSWER, system=CHATML_SYSTEM, observation=CHATML_TOOL_RESULT,
        default_system="Du bist ein freundlicher und hilfsbereiter KI-Assistent.",
        stop_words=("<|im_end|>", "<|im_start|>"), replace_eos=True, replace_jinja_template=True)
declare("zephyr", user=("<|user|>\n{{content}}", EOS, "<|assistant|>\n"), system=("<|system|>\n{{content}}", EOS),
        default_system="You are Zephyr, a helpful assistant.")

# ---- Qwen (1.5, 2, 2.5 use "qwen"), Qwen3 ------------------------------------------------------
QWEN = dict(user=CHATML_USER, assistant=CHATML_ANSWER, system=CHATML_SYSTEM, observation=QWEN_TOOL_RESULT,
            function=CHATML_ANSWER, function_format="qwen", tool_format="qwen", stop_words=("<|im_end|>",),
            replace_eos=True)
declare("qwen", default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.", **QWEN)
declare("qwen3", kind=REASONING, **QWEN)
declare("qwen3_nothink", **QWEN)

# ---- Llama, Mistral ----------------------------------------------------------------------------
declare("llama2", user=(BOS, "[INST] {{content}} [/INST]"), system="<<SYS>>\n{{content}}\n<</SYS>>\n\n",
        kind=FUSED_SYSTEM)
declare("llama2_zh", user=(BOS, "[INST] {{content}} [/INST]"), system="<<SYS>>\n{{content}}\n<</SYS>>\n\n",
        default_system="You are a helpful assistant. 你是一个乐于助人的助手。", kind=FUSED_SYSTEM)
declare("llama3", user=LLAMA3_USER, assistant="{{content}}<|eot_id|>", system=LLAMA3_SYSTEM,
        observation=LLAMA3_TOOL_RESULT, function="{{content}}<|eot_id|>", function_format="llama3",
        tool_format="llama3", prefix=(BOS,), stop_words=("<|eot_id|>", "<|eom_id|>"), replace_eos=True)
declare("mistral", user="[INST] {{content}}[/INST]", assistant=(" {{content}}", EOS), system="{{content}}\n\n",
        observation='[TOOL_RESULTS] {"content": {{content}}}[/TOOL_RESULTS]',
        function=("[TOOL_CALLS] {{content}}", EOS), function_format="mistral", tool_format="mistral",
        prefix=(BOS,), kind=FUSED_SYSTEM)
declare("ministral", user="[INST]{{content}}[/INST]", system="{{content}}\n\n",
        observation='[TOOL_RESULTS]{"content": {{content}}}[/TOOL_RESULTS]',
        function=("[TOOL_CALLS]{{content}}", EOS), function_format="mistral", tool_format="mistral",
        prefix=(BOS,), kind=FUSED_SYSTEM)

# ---- Gemma -------------------------------------------------------------------------------------
GEMMA = dict(user=GEMMA_USER, assistant="{{content}}<end_of_turn>\n", system="{{content}}\n\n",
             observation=GEMMA_TOOL_RESULT, prefix=(BOS,), kind=FUSED_SYSTEM)
declare("gemma", stop_words=("<end_of_turn>",), replace_eos=True, **GEMMA)
declare("gemma2", stop_words=("<eos>", "<end_of_turn>"), efficient_eos=True, **GEMMA)
# gemma3 as text: LLaMA-Factory's gemma3 differs from gemma only in its image handling (task: vlm)
declare("gemma3", stop_words=("<end_of_turn>",), replace_eos=True, **GEMMA)

# ---- DeepSeek ----------------------------------------------------------------------------------
declare("deepseek", user="User: {{content}}\n\nAssistant:", system="{{content}}\n\n", prefix=(BOS,))
declare("deepseek3", user="<｜User｜>{{content}}<｜Assistant｜>", prefix=(BOS,))
declare("deepseekr1", user="<｜User｜>{{content}}<｜Assistant｜>", prefix=(BOS,), kind=REASONING)

# ---- Phi ---------------------------------------------------------------------------------------
declare("phi", user="<|user|>\n{{content}}<|end|>\n<|assistant|>\n", assistant="{{content}}<|end|>\n",
        system="<|system|>\n{{content}}<|end|>\n", stop_words=("<|end|>",), replace_eos=True)
declare("phi4", user="<|im_start|>user<|im_sep|>{{content}}<|im_end|><|im_start|>assistant<|im_sep|>",
        assistant="{{content}}<|im_end|>", system="<|im_start|>system<|im_sep|>{{content}}<|im_end|>",
        stop_words=("<|im_end|>",), replace_eos=True)

# ---- GLM ---------------------------------------------------------------------------------------
declare("glm4", user="<|user|>\n{{content}}<|assistant|>", assistant="\n{{content}}", system="<|system|>\n{{content}}",
        observation="<|observation|>\n{{content}}<|assistant|>", function="{{content}}", function_format="glm4",
        tool_format="glm4", prefix="[gMASK]<sop>", stop_words=("<|user|>", "<|observation|>"), efficient_eos=True)
declare("chatglm3", user=(Token("<|user|>"), "\n", "{{content}}", Token("<|assistant|>")),
        assistant=("\n", "{{content}}"), system=(Token("<|system|>"), "\n", "{{content}}"),
        observation=(Token("<|observation|>"), "\n", "{{content}}", Token("<|assistant|>")),
        function="{{content}}", function_format="glm4", tool_format="glm4",
        prefix=(Token("[gMASK]"), Token("sop")), stop_words=("<|user|>", "<|observation|>"), efficient_eos=True)

# ---- Yi, InternLM, Cohere, and more of the chatml family ---------------------------------------
declare("yi", user=CHATML_USER, assistant=CHATML_ANSWER, system=CHATML_SYSTEM, stop_words=("<|im_end|>",))
declare("intern2", user=CHATML_USER, assistant=CHATML_ANSWER, system=CHATML_SYSTEM, prefix=(BOS,),
        default_system=INTERNLM_SYSTEM, stop_words=("<|im_end|>",))
declare("cohere", user="<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{{content}}<|END_OF_TURN_TOKEN|>"
                       "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
        system="<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{{content}}<|END_OF_TURN_TOKEN|>", prefix=(BOS,))
declare("smollm", user=CHATML_USER, assistant=CHATML_ANSWER, system=CHATML_SYSTEM, stop_words=("<|im_end|>",))
declare("smollm2", user=CHATML_USER, assistant=CHATML_ANSWER, system=CHATML_SYSTEM, stop_words=("<|im_end|>",),
        default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face.")
declare("solar", user="### User:\n{{content}}\n\n### Assistant:\n", system="### System:\n{{content}}\n\n",
        efficient_eos=True)
declare("falcon", user="User: {{content}}\nFalcon:", assistant="{{content}}\n", efficient_eos=True)

# Baichuan: LLaMA-Factory 0.9.5 no longer registers these; declared as its 0.9.3 did
declare("baichuan", user=(Token("<reserved_102>"), "{{content}}", Token("<reserved_103>")), efficient_eos=True)
declare("baichuan2", user="<reserved_106>{{content}}<reserved_107>", efficient_eos=True)

# Not declared: the multimodal templates
# (qwen2_vl, llava, ...: their image handling is task: vlm's) and the rest of its ~120 names.
