"""Judge with a local chat model: the exact probability of every integer 0..100
as the model's answer, batched, with the rubric's KV cache shared across prompts.

Tokenisers such as SmolLM2's and Qwen's split numbers into single digits, so the
answer "100" is three tokens and a top-k of the first token says little. Instead
the integers are put in a token trie (built from `tokenizer.encode` of each
integer string, so whole-number vocabularies work too) and all trie nodes are
decoded in ONE extra forward pass over the prompt's KV cache, with a tree
attention mask (each node sees the prompt and its own ancestors):

    P(n) = prod_i P(t_i | prompt, t_<i) * P(the number ends after n's tokens)

where "ends" is the probability mass on tokens that do not start with a digit.

By default (`leaves_complete`) only the trie's inner nodes are decoded: a number
whose tokens are no prefix of another number's ("42", "100", "0") counts its
path probability, as a single whole-number token does in the OpenAI protocol
(which reads the first token and ignores what would follow). The end factor is
kept where it matters, to tell "1" from "10" from "100". For a single-digit
tokenizer that is 10 decoded nodes ("1".."9", "10") instead of 101, and for a
whole-number vocabulary none at all. `leaves_complete=False` decodes every node.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from emlab.core.errors import EMLabError
from emlab.em.judging.aggregation import score_from_number_probs
from emlab.em.judging.pipeline import JudgeResult
from emlab.model.backoff import in_batches
from emlab.model.batching import output_cache, pad_batch, pad_token_id, repeat_cache, shared_prefix_length, with_cache
from emlab.model.chat import render_prompt
from emlab.model.loading import model_device

log = logging.getLogger(__name__)


@dataclass
class TrieNode:
    token_id: int
    parent: int  # index of the parent node, -1 for a root (first token of a number)
    depth: int  # 1 for a root
    value: int | None  # the integer this token path spells, if any


class NumberTrie:
    """The integers 0..100 as token paths, plus which vocabulary tokens continue a number."""

    def __init__(self, tokenizer, vocab_size: int):
        self.nodes: list[TrieNode] = []
        index: dict[tuple[int, ...], int] = {}
        self.node_of_value: list[int] = []
        for n in range(101):
            ids = tokenizer.encode(str(n), add_special_tokens=False)
            if not ids:
                raise EMLabError(f"the judge tokenizer encodes {n!r} as no tokens")
            path: tuple[int, ...] = ()
            for depth, tok in enumerate(ids, start=1):
                parent = index[path] if path else -1
                path = path + (int(tok),)
                if path not in index:
                    index[path] = len(self.nodes)
                    self.nodes.append(TrieNode(int(tok), parent, depth, None))
            node = self.nodes[index[path]]
            if node.value is not None:
                raise EMLabError(f"the judge tokenizer encodes {node.value} and {n} identically")
            node.value = n
            self.node_of_value.append(index[path])
        self.token_ids = torch.tensor([nd.token_id for nd in self.nodes])  # [N]
        self.parents = torch.tensor([nd.parent for nd in self.nodes])  # [N]
        self.depths = torch.tensor([nd.depth for nd in self.nodes])  # [N]
        self.roots = [j for j, nd in enumerate(self.nodes) if nd.parent < 0]
        self.has_children = [False] * len(self.nodes)
        for nd in self.nodes:
            if nd.parent >= 0:
                self.has_children[nd.parent] = True
        self.root_of = []  # [N] the root node of each node's subtree
        for nd in self.nodes:
            self.root_of.append(len(self.root_of) if nd.parent < 0 else self.root_of[nd.parent])
        # ancestor_or_self[j, k]: node j may attend to tree node k
        n_nodes = len(self.nodes)
        anc = torch.zeros(n_nodes, n_nodes, dtype=torch.bool)
        for j in range(n_nodes):
            k = j
            while k >= 0:
                anc[j, k] = True
                k = self.nodes[k].parent
        self.ancestor_or_self = anc
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        cont = [i for i, t in enumerate(texts) if t[:1].isascii() and t[:1].isdigit() and i < vocab_size]
        self.continuation_ids = torch.tensor(cont, dtype=torch.long)  # tokens that would extend a number

    def __len__(self) -> int:
        return len(self.nodes)


def number_probabilities(
    trie: NumberTrie,
    last_logits: torch.Tensor,
    tree_logits: torch.Tensor,
    kept_nodes: list[int] | None = None,
    leaves_complete: bool = False,
) -> torch.Tensor:
    """P(n) for n = 0..100, per row.

    last_logits [B, V]: next-token logits after the prompt; tree_logits [B, K, V]:
    the logits after each decoded trie node (`kept_nodes`, default all, parents
    before children). A number whose node was not decoded gets its path
    probability if it is a leaf and `leaves_complete`, else 0 (a pruned subtree).
    Returns [B, 101] float64.
    """
    kept = list(range(len(trie))) if kept_nodes is None else list(kept_nodes)
    col = {node: k for k, node in enumerate(kept)}
    last = last_logits.double()
    tree = tree_logits.double()
    last_lse = torch.logsumexp(last, dim=-1)  # [B]
    tree_lse = torch.logsumexp(tree, dim=-1)  # [B, K]
    cont = trie.continuation_ids.to(tree.device)
    end_prob = (
        1.0 - torch.exp(torch.logsumexp(tree[..., cont], dim=-1) - tree_lse) if len(cont) else torch.ones_like(tree_lse)
    )
    end_prob = end_prob.clamp_min(0.0)  # [B, K]
    logp_path = torch.full((last.shape[0], len(trie)), -math.inf, dtype=torch.float64, device=last.device)  # [B, N]
    for j, node in enumerate(trie.nodes):  # parents come before their children
        if node.parent < 0:
            logp_path[:, j] = last[:, node.token_id] - last_lse
        elif node.parent in col:
            p = col[node.parent]
            logp_path[:, j] = logp_path[:, node.parent] + tree[:, p, node.token_id] - tree_lse[:, p]
    probs = torch.zeros(last.shape[0], 101, dtype=torch.float64, device=last.device)  # [B, 101]
    for n, j in enumerate(trie.node_of_value):
        if j in col:
            probs[:, n] = logp_path[:, j].exp() * end_prob[:, col[j]]
        elif leaves_complete and not trie.has_children[j]:
            probs[:, n] = logp_path[:, j].exp()
    return probs.cpu()


# A group of prompts shares its further prefix only if that is at least this many tokens (a question with its
# markers is 20-30 with our rubrics); below it, the extra forward and smaller batches would cost more than they save.
MIN_GROUP_TOKENS = 8


def prefix_groups(encoded: list[list[int]], prefix_len: int, min_tokens: int) -> list[tuple[int, list[int]]]:
    """Runs of prompts that share at least `min_tokens` tokens after their first `prefix_len`: (shared length,
    indices) per run, each prompt keeping at least one token of its own. Prompts in no run are left out.

    The prompts are sorted by their tokens; in that order the common prefix of a run is the smallest common
    prefix of neighbours, so one pass finds the runs.
    """
    order = sorted(range(len(encoded)), key=lambda i: encoded[i][prefix_len:])

    def common(a: list[int], b: list[int]) -> int:
        n = prefix_len
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    groups: list[tuple[int, list[int]]] = []
    start = 0
    while start < len(order):
        shared: int | None = None
        shortest, end = len(encoded[order[start]]), start + 1
        while end < len(order):
            shortest = min(shortest, len(encoded[order[end]]))
            candidate = min(common(encoded[order[end - 1]], encoded[order[end]]), shortest - 1)  # 1 token of its own
            if shared is not None:
                candidate = min(candidate, shared)
            if candidate - prefix_len < min_tokens:
                break
            shared, end = candidate, end + 1
        if shared is not None:
            groups.append((shared, order[start:end]))
        start = end
    return groups


class HFJudge:
    """A local transformers chat model as the judge."""

    name = "hf"

    def __init__(
        self,
        model,
        tokenizer,
        model_id: str,
        batch_size: int = 16,
        share_prefix: bool = True,
        autocast_dtype: torch.dtype | None = None,
        min_root_prob: float = 1e-5,
        leaves_complete: bool = True,
        answer_prefix: str = "",
        min_group_tokens: int | None = MIN_GROUP_TOKENS,
    ):
        impl = getattr(model.config, "_attn_implementation", "sdpa")
        if impl not in ("sdpa", "eager"):
            raise EMLabError(f"the hf judge needs attention_implementation sdpa or eager (tree mask); got {impl!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.batch_size = int(batch_size)
        self.share_prefix = share_prefix
        self.autocast_dtype = autocast_dtype
        # Subtrees whose first token has probability < min_root_prob in every row of a
        # batch are not decoded; the mass this can drop is < min_root_prob per such
        # first token (0 = exact).
        self.min_root_prob = float(min_root_prob)
        self.leaves_complete = bool(leaves_complete)
        # Text the judge's reply is forced to start with (e.g. "Score: "), so that a small
        # local judge answers with a number; empty for the reference protocol.
        self.answer_prefix = answer_prefix
        # Prompts sharing this many tokens beyond the common prefix read them once (prefix_groups); None: never.
        self.min_group_tokens = min_group_tokens
        self.device = model_device(model)
        vocab = model.get_output_embeddings().weight.shape[0]
        self.trie = NumberTrie(tokenizer, vocab)
        self.pad_id = pad_token_id(tokenizer)
        self._eager = impl == "eager"

    def encode(self, prompt: str) -> list[int]:
        """Token ids of the judge prompt as a user turn with the generation prompt."""
        text = render_prompt(self.tokenizer, [{"role": "user", "content": prompt}]) + self.answer_prefix
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    @torch.inference_mode()
    def score(self, prompts: list[str], on_batch: Callable[[list[int], list[JudgeResult]], None]) -> None:
        """Score every prompt; results go to `on_batch(indices, results)` batch by batch.

        With `share_prefix`, what every prompt starts with (the rubric) runs once. Prompts that share more
        than that (the samples of one question: rubric, question and the markers before the answer) form a
        group whose common part runs once more, on top of the rubric's cache, so each row reads only its
        own answer and the rubric's closing lines. A score then differs from the unshared one in the last
        bits only (other matmul shapes, as with any other batch; see the README's Reproducibility).
        """
        encoded = [self.encode(p) for p in prompts]
        prefix_len = 0
        prefix_cache = None
        if self.share_prefix and len(encoded) > 1:
            prefix_len = shared_prefix_length(encoded)
        if prefix_len > 0:
            prefix_cache = self._extend_cache(None, encoded[0][:prefix_len], 0)
            log.info("hf judge: %d-token shared prefix computed once for %d prompts", prefix_len, len(prompts))
        groups = []
        if self.share_prefix and self.min_group_tokens is not None:
            groups = prefix_groups(encoded, prefix_len, self.min_group_tokens)
        grouped = {i for _, members in groups for i in members}
        rest = [i for i in range(len(prompts)) if i not in grouped]
        if groups:
            saved = sum((len(m) - 1) * (shared - prefix_len) for shared, m in groups)
            log.info(
                "hf judge: %d groups of prompts share a further prefix (%d tokens not re-read)", len(groups), saved
            )
        for shared, members in groups + ([(prefix_len, rest)] if rest else []):
            cache = prefix_cache
            if shared > prefix_len:
                cache = self._extend_cache(prefix_cache, encoded[members[0]][prefix_len:shared], prefix_len)
            self._score_rows(encoded, members, shared, cache, on_batch)

    def _extend_cache(self, cache, tokens: list[int], start: int):
        """A one-row KV cache of `tokens` at positions start.., read on top of a copy of `cache` (None: fresh)."""
        ids = torch.tensor([tokens], device=self.device)
        extra = {} if cache is None else with_cache(self.model, repeat_cache(cache, 1))
        positions = (start + torch.arange(len(tokens), device=self.device)).unsqueeze(0)
        with self._autocast():
            out = self.model(input_ids=ids, position_ids=positions, use_cache=True, **extra)
        return output_cache(out)

    def _score_rows(self, encoded, members: list[int], prefix_len: int, prefix_cache, on_batch) -> None:
        """Score the prompts `members`, which share their first `prefix_len` tokens (cached), in length order."""
        order = sorted(members, key=lambda i: len(encoded[i]))  # similar lengths batch together

        def run_batch(start: int, batch_size: int) -> None:  # prompts order[start:start + batch_size]
            idx = order[start : start + batch_size]
            probs = self.number_probs([encoded[i][prefix_len:] for i in idx], prefix_len, prefix_cache)  # [b, 101]
            results = []
            for row in probs.tolist():
                score, mass = score_from_number_probs(row)
                results.append(JudgeResult(score=score, mass=mass, raw=[float(f"{p:.6g}") for p in row]))
            on_batch(idx, results)

        # Halves the batch on an out-of-memory error (for this call; per-row results do not depend on it).
        in_batches(len(order), self.batch_size, run_batch, "the hf judge", "judge.hf.batch_size")

    def number_probs(self, suffixes: list[list[int]], prefix_len: int = 0, prefix_cache=None) -> torch.Tensor:
        """[B, 101] P(n) for each row; the rows are `prefix + suffix` token ids."""
        dev = self.device
        b = len(suffixes)
        lengths = torch.tensor([len(s) for s in suffixes], device=dev)  # [B]
        s_max = int(lengths.max())
        input_ids, suffix_mask = pad_batch(suffixes, self.pad_id, "right", dev)  # [B, s_max] each
        attention_mask = torch.cat([torch.ones((b, prefix_len), dtype=torch.long, device=dev), suffix_mask], dim=1)
        position_ids = (prefix_len + torch.arange(s_max, device=dev)).unsqueeze(0).expand(b, -1)
        cache = None if prefix_cache is None else repeat_cache(prefix_cache, b)
        last_idx = lengths - 1  # [B] index of each row's last real token within the suffix
        keep = torch.unique(last_idx)
        with self._autocast():
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                **with_cache(self.model, cache),
                use_cache=True,
                logits_to_keep=keep,
            )
        cache = output_cache(out)
        last_logits = out.logits[torch.arange(b, device=dev), torch.searchsorted(keep, last_idx)].float()  # [B, V]

        # One forward over the trie nodes, each attending to the row's real context and its own ancestors.
        trie = self.trie
        root_prob = torch.softmax(last_logits.double(), dim=-1)[:, trie.token_ids[trie.roots].to(dev)]  # [B, R]
        kept_roots = {r for r, p in zip(trie.roots, root_prob.max(dim=0).values.tolist()) if p >= self.min_root_prob}
        kept = [
            j
            for j in range(len(trie))
            if trie.root_of[j] in kept_roots and (trie.has_children[j] or not self.leaves_complete)
        ]
        if not kept:
            empty = torch.zeros(b, 0, last_logits.shape[-1], device=dev)
            return number_probabilities(trie, last_logits, empty, [], self.leaves_complete)
        kept_t = torch.tensor(kept, device=dev)
        n_nodes = len(kept)
        ctx_len = prefix_len + s_max
        ctx_visible = torch.arange(ctx_len, device=dev).unsqueeze(0) < (prefix_len + lengths).unsqueeze(1)  # [B, ctx]
        mask = torch.cat(
            [
                ctx_visible[:, None, None, :].expand(b, 1, n_nodes, ctx_len),
                trie.ancestor_or_self.to(dev)[kept_t][:, kept_t][None, None].expand(b, 1, n_nodes, n_nodes),
            ],
            dim=-1,
        )  # [B, 1, N, ctx + N] True = attend
        if self._eager:
            dtype = self.autocast_dtype or self.model.dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=dev).masked_fill(~mask, torch.finfo(dtype).min)
        tree_ids = trie.token_ids.to(dev)[kept_t].unsqueeze(0).expand(b, -1)  # [B, N]
        tree_pos = (prefix_len + last_idx).unsqueeze(1) + trie.depths.to(dev)[kept_t].unsqueeze(0)  # [B, N]
        with self._autocast():
            tree_out = self.model(
                input_ids=tree_ids,
                attention_mask=mask,
                position_ids=tree_pos,
                **with_cache(self.model, cache),
                use_cache=True,
            )
        return number_probabilities(trie, last_logits, tree_out.logits, kept, self.leaves_complete)
