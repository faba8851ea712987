"""Tiny random Phi-3 and Qwen2 checkpoints and tokenizers for the decoder tests (test_decoder.py,
test_generate.py, test_chat_template.py): transformers builds the reference model, the safetensors
library writes its weights, the tokenizers library trains a small byte-level BPE tokenizer."""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file

# The chat templates of Phi-3.5-mini-instruct and Qwen2.5-Instruct (tokenizer_config.json on the Hub).
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

QWEN2_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

CORPUS = [
    "The retina converts light into signals that the optic nerve carries to the brain.",
    "Glaucoma damages the optic nerve, often with raised intraocular pressure.",
    "Diabetic retinopathy shows microaneurysms, haemorrhages and hard exudates.",
    "Cataract clouds the lens; surgery replaces it with an intraocular lens.",
    "Age-related macular degeneration affects central vision: drusen, then atrophy.",
    "Optical coherence tomography images the retinal layers in cross-section.",
    "Le fond d'œil révèle une rétinopathie; 眼底检查 shows the fundus of the eye.",
    "Visual acuity 6/6, intraocular pressure 15 mmHg, cup-to-disc ratio 0.3.",
]

STYLES = {
    # special tokens, chat template, tokenizer_config special token fields
    "phi3": (["<unk>", "<s>", "</s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
             PHI3_TEMPLATE, {"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>", "pad_token": "<|endoftext|>"}),
    "qwen2": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
              QWEN2_TEMPLATE, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
}


def write_tokenizer(directory: str, style: str, vocab_size: int = 300) -> None:
    """A byte-level BPE tokenizer trained on CORPUS (multi-byte characters stay split across byte
    tokens), saved as tokenizer.json, with a tokenizer_config.json carrying the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials, template, special_map = STYLES[style]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.save(os.path.join(directory, "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template,
              "clean_up_tokenization_spaces": False, "model_max_length": 4096, **special_map}
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)


def randomize(model, seed: int) -> None:
    """Weights large enough that logits differ clearly between tokens (transformers' init is tiny)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5 * 1.5)


def save_checkpoint(model, directory: str, dtype=torch.float32, prefix: str = "", text_config_only: bool = False,
                    extra_tensors: dict | None = None, drop: tuple = (), generation_config: dict | None = None) -> None:
    """Writes config.json, model.safetensors (weights in `dtype`, names under `prefix`) and
    generation_config.json. text_config_only: an EyecareGPT-style config with the LLM's as text_config."""
    os.makedirs(directory, exist_ok=True)
    tied = model.config.tie_word_embeddings
    tensors = {prefix + k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()
               if not (tied and k == "lm_head.weight") and k not in drop}
    tensors.update(extra_tensors or {})
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    cfg = model.config.to_dict()
    if text_config_only:
        cfg = {"model_type": "eyecaregpt", "text_config": cfg, "image_token": "<image>"}
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    with open(os.path.join(directory, "generation_config.json"), "w") as f:
        json.dump(generation_config if generation_config is not None else {"eos_token_id": model.config.eos_token_id}, f)


def reference_with_dtype(model, dtype):
    """The f32 reference computing with the weights as stored in `dtype` (eyecare accumulates in f32,
    so this is the model it should match)."""
    import copy

    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.to(dtype).to(torch.float32))
    return ref.eval()


def phi3_model(seed=0, **overrides):
    from transformers import Phi3Config, Phi3ForCausalLM

    head_dim = 16
    half = head_dim // 2
    args = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, max_position_embeddings=256, original_max_position_embeddings=16,
                rope_scaling={"type": "longrope", "short_factor": [1.0 + 0.15 * i for i in range(half)],
                              "long_factor": [1.2 + 0.6 * i for i in range(half)]},
                rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=319, pad_token_id=3, tie_word_embeddings=False)
    args.update(overrides)
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(Phi3Config(**args)).eval()
    randomize(model, seed)
    return model


def qwen2_model(seed=0, **overrides):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    # 7 query heads share each key/value head.
    args = dict(vocab_size=320, hidden_size=112, intermediate_size=128, num_hidden_layers=2, num_attention_heads=14,
                num_key_value_heads=2, head_dim=8, max_position_embeddings=512, rope_theta=1e6, rms_norm_eps=1e-6,
                bos_token_id=0, eos_token_id=319, pad_token_id=0, tie_word_embeddings=False)
    args.update(overrides)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**args)).eval()
    randomize(model, seed)
    return model
