"""
GPT-2 in one file, nanoGPT-style: the base model that the adapters in moelora.py are injected into.

Read it top to bottom: GPTConfig, CausalSelfAttention, MLP, Block, KVCache (for fast decoding), GPT.
It knows nothing of adapters; moelora.inject() swaps nn.Linear layers after the model is built.

References:
1) OpenAI's GPT-2 release (tensorflow): https://github.com/openai/gpt-2/blob/master/src/model.py
2) Hugging Face's GPT-2 (the checkpoint layout GPT.from_pretrained reads)
3) nanoGPT (Karpathy), whose structure and names this file keeps

Try it:
    python -c "import model; m = model.GPT(model.GPTConfig(n_layer=2, n_head=2, n_embd=64, vocab_size=256)); print(m)"
"""

import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest sequence (Hugging Face: n_positions)
    vocab_size: int = 50257  # GPT-2's; our own tokenizer is much smaller
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linears and LayerNorms, as GPT-2 has them
    ln_eps: float = 1e-5  # Hugging Face: layer_norm_epsilon


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer_idx):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        # key, query, value projections for all heads, in one matrix
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.layer_idx = layer_idx  # which slot of a KVCache is ours

    def forward(self, x, cache=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if cache is None:
            dropout_p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            # decoding: attend to every earlier key of this sequence, padding excluded
            k, v = cache.append(self.layer_idx, k, v)  # (B, nh, S, hs), S keys so far
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=cache.attn_mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # GPT-2 was trained with the tanh approximation of GELU; exact GELU would change its logits
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.ln_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.ln_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        x = x + self.mlp(self.ln_2(x))
        return x


class KVCache:
    """Keys and values of every layer for a batch of left-padded sequences, grown one step at a time.

    Left padding lines up the last prompt token of every sequence, so one decoding step serves the whole
    batch. Padding keys are masked out, and each sequence's positions start at 0 at its first real token,
    so a padded prompt decodes exactly as it would alone.
    """

    def __init__(self, n_layer, is_real):
        self.k = [None] * n_layer
        self.v = [None] * n_layer
        self.is_real = is_real  # (B, S) bool: False on padding; grows as tokens are appended
        self.attn_mask = None  # (B, 1, T, S) bool, True where a query may attend; set by step()
        self.positions = None  # (B, T) position ids of the tokens of the current step

    def step(self, n_new):
        """Prepare masks and positions for n_new tokens appended at the end of every sequence."""
        B, S_old = self.is_real.shape
        if S_old and self.k[0] is not None:  # decoding step: the new tokens are real
            self.is_real = torch.cat([self.is_real, self.is_real.new_ones(B, n_new)], dim=1)
        S = self.is_real.shape[1]
        self.positions = (self.is_real.long().cumsum(1) - 1).clamp(min=0)[:, S - n_new:]  # (B, T)
        q_idx = torch.arange(S - n_new, S, device=self.is_real.device)
        k_idx = torch.arange(S, device=self.is_real.device)
        causal = k_idx[None, :] <= q_idx[:, None]  # (T, S)
        # a padding query sees only itself, which keeps its softmax finite (its output is never used)
        self_only = k_idx[None, :] == q_idx[:, None]  # (T, S)
        self.attn_mask = (causal & self.is_real[:, None, :]) | self_only  # (B, T, S)
        self.attn_mask = self.attn_mask[:, None]  # (B, 1, T, S)

    def append(self, layer, k, v):
        if self.k[layer] is not None:
            k = torch.cat([self.k[layer], k], dim=2)
            v = torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None
        assert config.block_size is not None
        self.config = config

        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.ln_eps, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying: the output projection is the token embedding (GPT-2 does this)
        self.transformer.wte.weight = self.lm_head.weight

        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections: std 0.02 / sqrt(2 * n_layer)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding=True):
        """Parameters of the model; the position embedding is left out by default, as nanoGPT does."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def forward(self, idx, targets=None, loss_mask=None, cache=None):
        """idx (B, T) token ids -> (logits, loss).

        targets (B, T): next-token ids; loss_mask (B, T): 1 where a token counts (e.g. the answer), 0
        elsewhere, the loss being the mean over counted tokens. With a KVCache (decoding), only the last
        position's logits are computed, (B, 1, V).
        """
        B, T = idx.size()
        if cache is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of length {T} is longer than block_size {self.config.block_size}")
            pos = torch.arange(0, T, dtype=torch.long, device=idx.device)[None]  # (1, T)
        else:
            pos = cache.positions  # (B, T)

        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, cache)
        x = self.transformer.ln_f(x)

        if cache is not None:
            return self.lm_head(x[:, [-1], :]), None  # (B, 1, V)
        logits = self.lm_head(x)  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
        if loss_mask is None:
            return logits, loss.mean()
        mask = loss_mask.reshape(-1).to(loss.dtype)
        # clamp: a batch with no counted token gives 0, not NaN
        return logits, (loss * mask).sum() / mask.sum().clamp(min=1.0)

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW over the trainable parameters only (after moelora.mark_only_adapters_trainable, the
        adapters); matrices and expert stacks get weight decay, biases and LayerNorm gains do not."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError("no trainable parameters: nothing for the optimizer to do")
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        # the fused kernel is one launch for all parameters instead of several per tensor
        extra = {"fused": True} if device_type == "cuda" else {}
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)

    # ------------------------------------------------------------------------------------------------
    # generation

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """Continue each row of idx (B, T) by max_new_tokens sampled tokens; temperature 0 is greedy."""
        cache = KVCache(self.config.n_layer, torch.ones_like(idx, dtype=torch.bool))
        out = idx
        for _ in range(max_new_tokens):
            next_id = self._decode_step(idx, cache, temperature, top_k)  # (B, 1)
            out = torch.cat([out, next_id], dim=1)
            idx = next_id  # the cache holds everything before: feed only the new token
        return out

    @torch.no_grad()
    def generate_batch(self, prompts, max_new_tokens, stop_token=None, pad_token=0):
        """Greedy continuations of many prompts of different lengths, decoded together.

        prompts: list of lists of token ids. Returns one list of new token ids per prompt, cut before
        stop_token. The whole batch stops early once every sequence has produced stop_token.
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("generate_batch needs non-empty prompts")
        L = max(len(p) for p in prompts)
        if L + max_new_tokens > self.config.block_size:
            raise ValueError(f"longest prompt ({L} tokens) + max_new_tokens ({max_new_tokens}) exceeds "
                             f"block_size {self.config.block_size}")
        device = self.lm_head.weight.device
        idx = torch.full((len(prompts), L), pad_token, dtype=torch.long, device=device)
        is_real = torch.zeros((len(prompts), L), dtype=torch.bool, device=device)
        for i, p in enumerate(prompts):  # left padding: the prompts end together
            idx[i, L - len(p):] = torch.tensor(p, dtype=torch.long, device=device)
            is_real[i, L - len(p):] = True

        cache = KVCache(self.config.n_layer, is_real)
        new_tokens = []
        done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
        for _ in range(max_new_tokens):
            idx = self._decode_step(idx, cache, temperature=0.0, top_k=None)  # (B, 1)
            new_tokens.append(idx)
            if stop_token is not None:
                done |= idx[:, 0] == stop_token
                if bool(done.all()):
                    break
        new_tokens = torch.cat(new_tokens, dim=1).tolist()
        if stop_token is not None:
            new_tokens = [t[:t.index(stop_token)] if stop_token in t else t for t in new_tokens]
        return new_tokens

    def _decode_step(self, idx, cache, temperature, top_k):
        """Run the new tokens idx (B, T) through the model with the cache and pick each row's next token."""
        if cache.is_real.shape[1] + (0 if cache.k[0] is None else idx.shape[1]) > self.config.block_size:
            raise ValueError(f"generation ran past block_size {self.config.block_size}")
        cache.step(idx.shape[1])
        logits, _ = self(idx, cache=cache)
        logits = logits[:, -1, :].float()  # (B, V)
        if temperature == 0.0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits / temperature
        if top_k is not None:
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits[logits < v[:, [-1]]] = -float("inf")
        return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)

    # ------------------------------------------------------------------------------------------------
    # Hugging Face checkpoints

    @classmethod
    def from_pretrained(cls, name_or_dir, dropout=0.0):
        """Load a Hugging Face GPT-2 checkpoint: a local directory holding config.json and
        model.safetensors (or pytorch_model.bin), or a hub name ('gpt2', 'gpt2-medium', ...) fetched
        through huggingface_hub when that is installed and the hub is reachable."""
        directory = _checkpoint_dir(name_or_dir)
        config_path = os.path.join(directory, "config.json")
        try:
            with open(config_path, encoding="utf-8") as f:
                config = _config_from_hf(json.load(f), dropout)
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # not JSON, not an object, a key missing
            raise ValueError(f"{config_path} is not a GPT-2 config.json ({type(e).__name__}: {e})") from None
        model = cls(config)
        tensors = _read_hf_tensors(directory)
        model._load_hf_tensors(tensors, source=directory)
        return model

    def _load_hf_tensors(self, tensors, source):
        """Copy Hugging Face's tensors into this model, checking every name and shape."""
        # Hugging Face's GPT2LMHeadModel prefixes names with 'transformer.'; its GPT2Model does not
        tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
        # causal-mask buffers of old checkpoints, and the tied output head, carry no new weights
        ignored = [k for k in tensors if k.endswith((".attn.bias", ".attn.masked_bias")) or k == "lm_head.weight"]
        for k in ignored:
            tensors.pop(k)
        ours = {k.removeprefix("transformer."): v for k, v in self.state_dict().items() if k != "lm_head.weight"}
        missing = sorted(set(ours) - set(tensors))
        unexpected = sorted(set(tensors) - set(ours))
        if missing or unexpected:
            raise ValueError(f"checkpoint {source} does not match GPT-2: missing tensors {missing[:8]}"
                             f"{' ...' if len(missing) > 8 else ''}, unexpected tensors {unexpected[:8]}"
                             f"{' ...' if len(unexpected) > 8 else ''}")
        # Hugging Face stores these four as Conv1D, weight (in, out): ours are nn.Linear, (out, in)
        conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        with torch.no_grad():
            for k, target in ours.items():
                src = tensors[k].t() if k.endswith(conv1d) else tensors[k]
                if src.shape != target.shape:
                    raise ValueError(f"checkpoint {source}: tensor {k} has shape {tuple(tensors[k].shape)}, "
                                     f"expected {tuple(target.shape)}"
                                     f"{' (transposed, as Conv1D)' if k.endswith(conv1d) else ''}")
                target.copy_(src)


def _checkpoint_dir(name_or_dir):
    """A local checkpoint directory, or the hub's copy of a named model when the hub can be reached."""
    if os.path.isdir(name_or_dir):
        if not os.path.exists(os.path.join(name_or_dir, "config.json")):
            raise FileNotFoundError(f"{name_or_dir} has no config.json: it is not a Hugging Face checkpoint")
        return name_or_dir
    hint = (f"put its config.json and model.safetensors (or pytorch_model.bin) in a directory and pass "
            f"that directory's path instead of {name_or_dir!r}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(f"{name_or_dir!r} is not a directory and huggingface_hub is not installed: {hint}")
    try:
        # the tokenizer's files come along, so that the data can be prepared from the same directory
        # (python -m data.prepare --tokenizer=DIR)
        return snapshot_download(name_or_dir, allow_patterns=["config.json", "*.safetensors", "pytorch_model.bin",
                                                              "vocab.json", "merges.txt"])
    except Exception as e:  # offline, unknown name, ...: the hub's own message says which
        raise FileNotFoundError(f"could not fetch {name_or_dir!r} from the Hugging Face hub ({e}): {hint}") from e


def _config_from_hf(hf, dropout):
    """GPTConfig from a Hugging Face config.json; refuses GPT-2 variants this file does not implement."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"model_type is {hf['model_type']!r}: only GPT-2 checkpoints are supported")
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"activation_function {hf['activation_function']!r}: GPT-2 here uses tanh-GELU")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(flag, False):
            raise ValueError(f"config.json sets {flag}, which this GPT-2 does not implement")
    if not hf.get("scale_attn_weights", True):
        raise ValueError("config.json turns scale_attn_weights off, which this GPT-2 does not implement")
    return GPTConfig(
        block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
        n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=dropout, bias=True,
        ln_eps=hf.get("layer_norm_epsilon", 1e-5),
    )


def _read_hf_tensors(directory):
    """The checkpoint's tensors by name, from model.safetensors (preferred) or pytorch_model.bin."""
    st_path = os.path.join(directory, "model.safetensors")
    bin_path = os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(st_path):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError(f"{st_path} needs the safetensors package: pip install safetensors "
                              "(or pip install -e '.[hf]')")
        path, load = st_path, load_file
    elif os.path.exists(bin_path):
        path, load = bin_path, lambda p: torch.load(p, map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{directory} holds neither model.safetensors nor pytorch_model.bin")
    try:
        return load(path)
    except Exception as e:  # truncated or not that format: safetensors, zip and unpickling errors alike
        raise ValueError(f"{path} cannot be read, truncated or not a checkpoint ({type(e).__name__}: {e})") from None
