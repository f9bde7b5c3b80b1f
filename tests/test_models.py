import torch

from evolm.models import GPT, GPTConfig, LSTMConfig, LSTMLanguageModel, count_parameters


def _gpt(context=32):
    torch.manual_seed(0)
    return GPT(GPTConfig(context=context, width=32, layers=2, heads=4, ff=64)).eval()


def test_output_shapes():
    tokens = torch.randint(0, 256, (3, 20))
    assert _gpt()(tokens).shape == (3, 20, 256)
    lstm = LSTMLanguageModel(LSTMConfig(width=32))
    assert lstm(tokens).shape == (3, 20, 256)


def test_reference_model_has_about_137k_parameters():
    assert count_parameters(GPT(GPTConfig())) == 137_216


def test_gpt_cached_steps_match_full_forward():
    model = _gpt()
    tokens = torch.randint(0, 256, (2, 24))
    full = model(tokens)
    logits, state = model.prefill(tokens[:, :8])
    torch.testing.assert_close(logits, full[:, 7], rtol=1e-4, atol=1e-5)
    for t in range(8, 24):
        logits, state = model.step(tokens[:, t : t + 1], state)
        torch.testing.assert_close(logits, full[:, t], rtol=1e-4, atol=1e-5)


def test_lstm_carried_state_matches_full_forward():
    torch.manual_seed(0)
    model = LSTMLanguageModel(LSTMConfig(width=32, layers=2)).eval()
    tokens = torch.randint(0, 256, (2, 12))
    full = model(tokens)
    logits, state = model.prefill(tokens[:, :4])
    for t in range(4, 12):
        logits, state = model.step(tokens[:, t : t + 1], state)
        torch.testing.assert_close(logits, full[:, t], rtol=1e-4, atol=1e-5)


def test_generation_is_seeded_and_can_exceed_the_context():
    model = _gpt(context=16)
    prompt = torch.randint(0, 256, (2, 5))
    a = model.generate(prompt, 40, temperature=1.0, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 40, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 40) and torch.equal(a, b)
    greedy = model.generate(prompt, 3, temperature=0.0)
    # Greedy decoding picks the argmax of the full forward at every step.
    sequence = prompt
    for _ in range(3):
        sequence = torch.cat([sequence, model(sequence)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(greedy, sequence[:, 5:])
