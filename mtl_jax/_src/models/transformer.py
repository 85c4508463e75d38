"""A small pre-LN transformer-encoder backbone (ViT-style tokenisation of any input).

Tokens from the input's rank, each embedded by one Dense(-> d_model) layer ``embed``:
[B, N, D] tokens as they are; [B, D] vectors cut into ``num_tokens`` equal chunks
[B, num_tokens, D / num_tokens]; [B, H, W, C] images cut into non-overlapping
``patch_size`` x ``patch_size`` patches [B, (H/p)(W/p), p*p*C] (row-major patch order).
(A rank-3 input is always tokens: give a grayscale image its channel axis, [B, H, W, 1].)
With ``output='cls'`` a learned token is prepended.  Then x_0 = embed(tokens) + P, with P a
learned position embedding [N, d_model].

Block l (stage ``block{l}``; ``hook('block{l}', x)`` after it):

    x <- x + MHA(LN(x))              MHA: ``num_heads`` heads of size d_model / num_heads,
    x <- x + W_2 gelu(W_1 LN(x))     softmax(q k^T / sqrt(d_head)) v, then an output Dense
                                     W_1: d_model -> mlp_ratio * d_model, W_2: back to d_model
(dropout after MHA, inside it on the attention weights, and after the MLP).  The result is
LN_final(x): ``output='tokens'`` [B, N, d_model]; ``'mean'`` its mean over tokens
[B, d_model]; ``'cls'`` the class token [B, d_model].
"""

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from mtl_jax._src import registry
from mtl_jax._src.models.common import check
from mtl_jax._src.models.stages import Hook, run_hook

OUTPUTS = ('mean', 'tokens', 'cls')


def tokenize(x, num_tokens: int, patch_size: int):
  """[B, N, D] kept; [B, D] -> [B, num_tokens, D / num_tokens]; [B, H, W, C] -> patches."""
  check(x.ndim in (2, 3, 4), 'transformer.input', 'expects input shapes [B, D], [B, N, D] or '
        '[B, H, W, C]', tuple(x.shape))
  if x.ndim == 3:
    return x
  if x.ndim == 2:
    check(x.shape[1] % num_tokens == 0, 'transformer.num_tokens',
          f'must divide the input width {x.shape[1]} (input shape {tuple(x.shape)})', num_tokens)
    return jnp.reshape(x, (x.shape[0], num_tokens, x.shape[1] // num_tokens))
  b, h, w, c = x.shape
  p = patch_size
  check(h % p == 0 and w % p == 0, 'transformer.patch_size',
        f'must divide the image height and width (input shape {tuple(x.shape)})', p)
  x = jnp.reshape(x, (b, h // p, p, w // p, p, c)).transpose(0, 1, 3, 2, 4, 5)
  return jnp.reshape(x, (b, (h // p) * (w // p), p * p * c))


class EncoderBlock(nn.Module):
  """One pre-LN block: x + MHA(LN(x)), then + MLP(LN(x))."""
  num_heads: int
  mlp_ratio: float = 2
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    d = x.shape[-1]
    y = nn.LayerNorm(name='ln_attn')(x)
    y = nn.MultiHeadDotProductAttention(self.num_heads, qkv_features=d, out_features=d,
                                        dropout_rate=self.dropout, deterministic=not train,
                                        name='attn')(y)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.LayerNorm(name='ln_mlp')(x)
    y = nn.Dense(max(1, int(round(self.mlp_ratio * d))), name='mlp_in')(y)
    y = nn.Dense(d, name='mlp_out')(nn.gelu(y))
    return x + nn.Dropout(self.dropout, deterministic=not train)(y)


class TransformerEncoder(nn.Module):
  """Tokenise, embed, add positions, ``num_layers`` pre-LN blocks, final LN, pool."""
  d_model: int = 32
  num_heads: int = 4
  num_layers: int = 2
  mlp_ratio: float = 2
  num_tokens: int = 4
  patch_size: int = 4
  output: str = 'mean'
  dropout: float = 0.0

  @property
  def stage_names(self) -> tuple[str, ...]:
    return tuple(f'block{i}' for i in range(self.num_layers))

  @nn.compact
  def __call__(self, x, train: bool = False, hook: Optional[Hook] = None):
    x = nn.Dense(self.d_model, name='embed')(tokenize(x, self.num_tokens, self.patch_size))
    if self.output == 'cls':
      cls = self.param('cls', nn.initializers.zeros, (1, 1, self.d_model))
      x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.d_model)), x], axis=1)
    x = x + self.param('pos_embed', nn.initializers.normal(0.02), x.shape[1:])
    for i in range(self.num_layers):
      x = EncoderBlock(self.num_heads, self.mlp_ratio, self.dropout, name=f'block{i}')(x, train)
      x = run_hook(hook, f'block{i}', x)
    x = nn.LayerNorm(name='ln_final')(x)
    if self.output == 'mean':
      return jnp.mean(x, axis=1)
    if self.output == 'cls':
      return x[:, 0]
    return x


def _positive_int(field, value):
  check(type(value) is int and value >= 1, field, 'must be a positive integer', value)


@registry.BACKBONES.register('transformer')
def transformer(d_model=32, num_heads=4, num_layers=2, mlp_ratio=2.0, num_tokens=4, patch_size=4,
                output='mean', dropout=0.0):
  """A ``TransformerEncoder``; bad options raise ``ValueError`` naming ``transformer.<field>``."""
  for field, value in (('d_model', d_model), ('num_heads', num_heads),
                       ('num_layers', num_layers), ('num_tokens', num_tokens),
                       ('patch_size', patch_size)):
    _positive_int(f'transformer.{field}', value)
  check(d_model % num_heads == 0, 'transformer.num_heads',
        f'must divide d_model={d_model}', num_heads)
  check(isinstance(mlp_ratio, (int, float)) and not isinstance(mlp_ratio, bool)
        and mlp_ratio > 0, 'transformer.mlp_ratio', 'must be a positive number', mlp_ratio)
  check(output in OUTPUTS, 'transformer.output', f'must be one of {OUTPUTS}', output)
  check(0 <= dropout < 1, 'transformer.dropout', 'must be in [0, 1)', dropout)
  return TransformerEncoder(d_model, num_heads, num_layers, mlp_ratio, num_tokens, patch_size,
                            output, dropout)
