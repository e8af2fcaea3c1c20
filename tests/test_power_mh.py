"""Power sampling by MH on an enumerable tabular model: the chain's exact stationary distribution
is p^α, and the block-wise sampler's output is close to it (and far from plain sampling)."""

import itertools
import math
import random

import pytest
import torch

from gfnlm.evaluation.exact import ExactSetting, TabularPolicy
from gfnlm.samplers.power_mh import MHStats, log_acceptance, power_sample

ALPHA = 4.0


class Tabular:
    """Next-token log-probs of a random tabular LM: ``V`` tokens + EOS, at most ``L`` tokens."""

    def __init__(self, vocab: int, max_len: int, seed: int) -> None:
        self.setting = ExactSetting(vocab, max_len)
        logits = TabularPolicy.random(self.setting, 1.5, seed).logits.detach()
        self.log_p = logits.log_softmax(-1).tolist()
        self.log_q = (ALPHA * logits).log_softmax(-1).tolist()  # temperature 1/α
        self.eos = self.setting.eos_id

    def state(self, prefix: list[int]) -> int:
        offset = sum(self.setting.vocab_size**k for k in range(len(prefix)))
        return offset + sum(
            t * self.setting.vocab_size ** (len(prefix) - 1 - j) for j, t in enumerate(prefix)
        )

    def logp(self, prefix: list[int], suffix: list[int], table) -> list[float]:
        values, seq = [], list(prefix)
        for token in suffix:
            values.append(table[self.state(seq)][token])
            seq.append(token)
        return values

    def base_logp(self, prefix, suffix):
        return self.logp(prefix, suffix, self.log_p)

    def propose_with(self, rng: random.Random):
        def propose(prefix: list[int], max_tokens: int):
            seq, out, logq = list(prefix), [], []
            while len(out) < max_tokens:
                probs = [math.exp(v) for v in self.log_q[self.state(seq)]]
                token = rng.choices(range(len(probs)), weights=probs)[0]
                out.append(token)
                logq.append(self.log_q[self.state(seq)][token])
                if token == self.eos:
                    break
                seq.append(token)
            return out, logq

        return propose

    def suffixes(self, prefix_len: int):
        """Every continuation of a prefix of this length: ends with EOS or reaches the cap."""
        room = self.setting.max_len - prefix_len
        for k in range(room + 1):
            for body in itertools.product(range(self.setting.vocab_size), repeat=k):
                if k < room:
                    yield [*body, self.eos]
                elif k == room and k > 0:
                    yield list(body)

    def responses(self):
        return [tuple(s) for s in self.suffixes(0)]

    def power_target(self) -> dict[tuple, float]:
        weights = {y: math.exp(ALPHA * sum(self.base_logp([], list(y)))) for y in self.responses()}
        total = sum(weights.values())
        return {y: w / total for y, w in weights.items()}


@pytest.mark.parametrize("seed", [0, 1])
def test_mh_kernel_has_p_alpha_as_its_exact_stationary_distribution(seed):
    model = Tabular(vocab=3, max_len=3, seed=seed)
    responses = model.responses()
    index = {y: k for k, y in enumerate(responses)}
    kernel = torch.zeros(len(responses), len(responses), dtype=torch.float64)
    for x in responses:
        for i in range(len(x)):  # position picked uniformly
            prefix = list(x[:i])
            for new in model.suffixes(i):
                q_new = math.exp(sum(model.logp(prefix, new, model.log_q)))
                log_a = log_acceptance(
                    ALPHA,
                    model.base_logp(prefix, new),
                    model.base_logp(prefix, list(x[i:])),
                    model.logp(prefix, new, model.log_q),
                    model.logp(prefix, list(x[i:]), model.log_q),
                    len(x),
                    i + len(new),
                )
                accept = min(1.0, math.exp(log_a))
                kernel[index[x], index[tuple(prefix + new)]] += q_new * accept / len(x)
                kernel[index[x], index[x]] += q_new * (1 - accept) / len(x)
    assert torch.allclose(kernel.sum(1), torch.ones(len(responses), dtype=torch.float64))
    values, vectors = torch.linalg.eig(kernel.T)
    stationary = vectors[:, values.real.argmax()].real
    stationary = stationary / stationary.sum()
    target = torch.tensor([model.power_target()[y] for y in responses], dtype=torch.float64)
    assert 0.5 * (stationary - target).abs().sum() < 1e-9


def test_block_wise_sampler_output_is_close_to_p_alpha():
    model = Tabular(vocab=2, max_len=3, seed=3)
    target = model.power_target()
    rng = random.Random(0)
    propose = model.propose_with(rng)
    stats = MHStats()
    draws = 4000
    counts: dict[tuple, int] = {}
    for _ in range(draws):
        tokens, logp = power_sample(
            propose,
            model.base_logp,
            model.eos,
            ALPHA,
            max_new_tokens=3,
            block_size=1,
            mh_steps=10,
            rng=rng,
            stats=stats,
        )
        assert logp == pytest.approx(model.base_logp([], tokens))
        counts[tuple(tokens)] = counts.get(tuple(tokens), 0) + 1
    tv_power = 0.5 * sum(abs(counts.get(y, 0) / draws - p) for y, p in target.items())
    base = {y: math.exp(sum(model.base_logp([], list(y)))) for y in target}
    tv_base = 0.5 * sum(abs(base[y] - p) for y, p in target.items())
    assert tv_power < 0.05
    assert tv_base > 3 * tv_power  # plain T=1 sampling is far from the target: the check can fail
    assert 0 < stats.acceptance_rate < 1
    assert stats.token_cost > 5  # ~ (1 + mh_steps) proposals per block
