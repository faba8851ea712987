"""Chat prompts and tokenization against transformers: the same tokenizer.json and tokenizer_config.json
(with Phi-3.5's and Qwen2.5's chat templates) loaded by transformers' AutoTokenizer and by eyecare give
the same prompt strings and token ids."""
import json

import pytest

from eyecare.tokenizer import Tokenizer
from tiny_llm import write_tokenizer

CHATS = [
    [{"role": "user", "content": "What does the optic disc look like in glaucoma?"}],
    [{"role": "system", "content": "You are an ophthalmologist."},
     {"role": "user", "content": "Describe this fundus."},
     {"role": "assistant", "content": "Cup-to-disc ratio 0.7, with notching."},
     {"role": "user", "content": "Diagnosis? Réponse en français, 请."}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
]


@pytest.fixture(scope="module", params=["phi3", "qwen2"])
def tokenizers_pair(request, tmp_path_factory):
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp(request.param)
    write_tokenizer(str(d), request.param)
    return Tokenizer(d), AutoTokenizer.from_pretrained(d)


@pytest.mark.parametrize("chat", range(len(CHATS)))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_prompt_equals_transformers(tokenizers_pair, chat, add_generation_prompt):
    ours, theirs = tokenizers_pair
    messages = CHATS[chat]
    want = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == want
    want_ids = theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                          return_dict=False)
    assert ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True) == want_ids


def test_tools_and_tool_turns_render_as_transformers(tmp_path):
    from transformers import AutoTokenizer

    write_tokenizer(str(tmp_path), "qwen2")
    ours, theirs = Tokenizer(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    tools = [{"type": "function", "function": {"name": "measure_iop", "description": "Tonometry <mmHg> & more",
                                               "parameters": {"type": "object", "properties": {"eye": {"type": "string"}}}}}]
    messages = [{"role": "user", "content": "IOP of the left eye?"},
                {"role": "assistant", "content": None,
                 "tool_calls": [{"type": "function", "function": {"name": "measure_iop", "arguments": {"eye": "left"}}}]},
                {"role": "tool", "content": "21"}]
    want = theirs.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    got = ours.apply_chat_template(messages, tools=tools, add_generation_prompt=True)
    assert got == want
    assert "<mmHg> & more" in got  # tojson does not escape HTML


def test_text_encoding_and_decoding_equal_transformers(tokenizers_pair):
    ours, theirs = tokenizers_pair
    text = "Fundus: drusen 眼底 — œdème, IOP 15 mmHg."
    assert ours.encode(text) == theirs(text)["input_ids"]
    ids = ours.encode(text, add_special_tokens=False)
    assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True) == text
    eos = ours.eos_token_id
    assert ours.decode(ids + [eos]) == text  # special tokens are skipped
    assert eos == theirs.eos_token_id


def test_template_errors_are_clear(tmp_path):
    write_tokenizer(str(tmp_path), "phi3")
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations must start with the user') }}{% endif %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer(tmp_path)
    with pytest.raises(ValueError, match="must start with the user"):
        tok.apply_chat_template([{"role": "assistant", "content": "x"}])
    with pytest.raises(ValueError, match="not valid Jinja"):
        tok.apply_chat_template([{"role": "user", "content": "x"}], chat_template="{% for %}")
    del config["chat_template"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no chat_template"):
        Tokenizer(tmp_path).apply_chat_template([{"role": "user", "content": "x"}])


def test_chat_template_jinja_file_is_read(tmp_path):
    # Newer transformers versions save the template beside tokenizer_config.json.
    write_tokenizer(str(tmp_path), "phi3")
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    template = config.pop("chat_template")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "chat_template.jinja").write_text(template)
    out = Tokenizer(tmp_path).apply_chat_template([{"role": "user", "content": "Hi"}])
    assert out == "<|user|>\nHi<|end|>\n<|assistant|>\n"


@pytest.mark.parametrize("add_bos,add_eos", [(True, False), (True, True), (False, False)])
def test_add_bos_and_eos_flags(tmp_path, add_bos, add_eos):
    # tokenizer_config.json's add_bos_token / add_eos_token decide what encode() adds, over
    # tokenizer.json's post-processor (transformers' LlamaTokenizerFast convention).
    write_tokenizer(str(tmp_path), "phi3")
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.update(add_bos_token=add_bos, add_eos_token=add_eos)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer(tmp_path)
    plain = tok.encode("Intraocular pressure", add_special_tokens=False)
    want = [tok.bos_token_id] * add_bos + plain + [tok.eos_token_id] * add_eos
    assert tok.encode("Intraocular pressure") == want
    assert tok.decode(want) == "Intraocular pressure"
