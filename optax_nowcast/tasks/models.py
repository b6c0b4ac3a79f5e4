"""Flax models of the benchmark tasks, built from Flax's standard modules.

The name-based neural-graph builder (``graphs.neural_graph``) recognises ``CNN``, ``MLP`` and ``GPT`` by
their parameter names; the others (``ResNet``, ``ViT``, ``ResCNN``, ``NNXTutorialCNN``,
``ScanTransformer``) need the graph traced from their forward pass (``graph_trace.trace_graph``).

>>> import jax, jax.numpy as jnp
>>> p = CNN((16, 32, 32)).init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
>>> sum(x.size for x in jax.tree.leaves(p))  # FM/16: 14,378 parameters, as in the NiNo paper
14378
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx


class CNN(nn.Module):
  """NiNo's 3-layer vision CNN (official ``utils/vision.py`` ``Net``).

  ``Conv(c1, 3x3, stride 2, VALID) -> ReLU -> Conv(c2, 3x3, SAME) -> ReLU -> Conv(c3, 3x3, SAME) -> ReLU ->
  global average pool -> Dense(num_classes)``; ``features=(16, 32, 32)`` is the "/16" net, ``(32, 64, 64)``
  the "/32" net. Input: NHWC floats. ``conv`` swaps the convolution's implementation (e.g.
  ``tasks.conv_as_matmul``, much faster on CPU) without changing the parameters.
  """

  features: Sequence[int] = (16, 32, 32)
  num_classes: int = 10
  conv: Callable[..., jax.Array] | None = None  # a conv_general_dilated for nn.Conv; None: XLA's

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = {} if self.conv is None else {"conv_general_dilated": self.conv}
    for i, f in enumerate(self.features):
      x = nn.relu(nn.Conv(f, (3, 3), strides=2 if i == 0 else 1, padding="VALID" if i == 0 else "SAME",
                          **kw)(x))
    return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


class Block(nn.Module):
  """A GPT-2 block: pre-LayerNorm causal self-attention and a 4x GELU MLP, both residual.

  As in GPT-2: LayerNorm epsilon 1e-5, tanh-approximated GELU (``gelu_new``), attention logits scaled by
  ``1/sqrt(head_dim)``.
  """

  dim: int
  num_heads: int

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    h = nn.LayerNorm(epsilon=1e-5, name="ln_1")(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads, qkv_features=self.dim,
                                            out_features=self.dim, name="attn")(h, h, mask=mask)
    h = nn.LayerNorm(epsilon=1e-5, name="ln_2")(x)
    h = nn.Dense(4 * self.dim, name="fc")(h)
    return x + nn.Dense(self.dim, name="proj")(nn.gelu(h))


class GPT(nn.Module):
  """A small GPT-2-style language model with tied input/output embeddings (as GPT-2).

  ``GPT(vocab_size=65, block_size=128, num_layers=3, dim=24, num_heads=3)`` is the 3-24 model of the NiNo
  LM tasks. Input: int token ids ``(batch, time)``; output: logits ``(batch, time, vocab_size)``.
  """

  vocab_size: int
  block_size: int
  num_layers: int
  dim: int
  num_heads: int

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    t = tokens.shape[-1]
    wte = nn.Embed(self.vocab_size, self.dim, embedding_init=nn.initializers.normal(0.02), name="wte")
    wpe = nn.Embed(self.block_size, self.dim, embedding_init=nn.initializers.normal(0.01), name="wpe")
    x = wte(tokens) + wpe(jnp.arange(t))
    mask = nn.make_causal_mask(tokens)
    for i in range(self.num_layers):
      x = Block(self.dim, self.num_heads, name=f"h_{i}")(x, mask)
    return wte.attend(nn.LayerNorm(epsilon=1e-5, name="ln_f")(x))


class MLP(nn.Module):
  """Multi-layer perceptron with ReLU hidden layers (an image input is flattened first)."""

  features: Sequence[int] = (128, 128)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape((x.shape[0], -1))
    for f in self.features:
      x = nn.relu(nn.Dense(f)(x))
    return nn.Dense(self.num_classes)(x)


class ResCNN(nn.Module):
  """A small residual CNN with GroupNorm: per stage a stride-2 convolution and a residual block
  ``x + Conv(ReLU(GroupNorm(Conv(ReLU(GroupNorm(x))))))``, then global pooling and a classifier.

  Every stage halves the resolution. GroupNorm (not BatchNorm) keeps the model a pure function of its
  parameters, as the tasks' ``loss`` needs. ``features`` are the stages' widths (each divisible by
  ``groups``).
  """

  features: Sequence[int] = (16, 32)
  groups: int = 4
  num_classes: int = 10
  conv: Callable[..., jax.Array] | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = {} if self.conv is None else {"conv_general_dilated": self.conv}
    for i, f in enumerate(self.features):
      x = nn.Conv(f, (3, 3), strides=2, padding="SAME", name=f"down{i}", **kw)(x)
      h = nn.Conv(f, (3, 3), padding="SAME", name=f"res{i}_a", **kw)(
          nn.relu(nn.GroupNorm(self.groups, name=f"norm{i}_a")(x)))
      x = x + nn.Conv(f, (3, 3), padding="SAME", name=f"res{i}_b", **kw)(
          nn.relu(nn.GroupNorm(self.groups, name=f"norm{i}_b")(h)))
    return nn.Dense(self.num_classes)(nn.relu(x).mean(axis=(1, 2)))


class ResNet(nn.Module):
  """A ResNet-18-style CNN (He et al. 2016, the CIFAR variant): a 3x3 stem, four stages of two basic blocks
  ``relu(x' + BN(Conv(relu(BN(Conv(x))))))`` (``x'``: a strided 1x1 Conv + BN shortcut where the shape
  changes), global average pooling and a classifier. ``width=64, blocks=(2, 2, 2, 2)`` is ResNet-18.

  ``norm="batch"`` (BatchNorm; call with ``train=True`` and ``mutable=["batch_stats"]`` to train) or
  ``"group"`` (GroupNorm with ``groups`` groups: a pure function of the parameters). ``conv``: a
  ``conv_general_dilated`` replacement (the CPU benchmark's ``conv_as_matmul``).
  """

  width: int = 64
  blocks: Sequence[int] = (2, 2, 2, 2)
  norm: str = "batch"
  groups: int = 4
  num_classes: int = 10
  conv: Callable[..., jax.Array] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    def norm(name):
      if self.norm == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
      return nn.GroupNorm(self.groups, name=name)

    kw = {"use_bias": False, "padding": "SAME"}
    if self.conv is not None:
      kw["conv_general_dilated"] = self.conv
    x = nn.relu(norm("stem_norm")(nn.Conv(self.width, (3, 3), name="stem", **kw)(x)))
    for s, n in enumerate(self.blocks):
      f = self.width * 2 ** s
      for b in range(n):
        stride = 2 if s > 0 and b == 0 else 1
        p = f"stage{s}_block{b}"
        h = nn.Conv(f, (3, 3), strides=stride, name=f"{p}_conv1", **kw)(x)
        h = nn.relu(norm(f"{p}_norm1")(h))
        h = norm(f"{p}_norm2")(nn.Conv(f, (3, 3), name=f"{p}_conv2", **kw)(h))
        if stride != 1 or x.shape[-1] != f:
          x = norm(f"{p}_short_norm")(nn.Conv(f, (1, 1), strides=stride, name=f"{p}_short", **kw)(x))
        x = nn.relu(x + h)
    return nn.Dense(self.num_classes, name="head")(x.mean(axis=(1, 2)))


class ViT(nn.Module):
  """A small Vision Transformer (Dosovitskiy et al. 2021): ``patch x patch`` patches embedded by a strided
  Conv, a class token, learned position embeddings, ``depth`` pre-LN blocks (multi-head self-attention,
  a GELU MLP of ``mlp_ratio * dim``), a final LayerNorm and a classifier on the class token."""

  patch: int = 4
  dim: int = 64
  depth: int = 4
  num_heads: int = 4
  mlp_ratio: int = 2
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.dim, (self.patch, self.patch), strides=self.patch, padding="VALID",
                name="patch_embed")(x)
    b = x.shape[0]
    x = x.reshape(b, -1, self.dim)
    cls = self.param("cls", nn.initializers.zeros_init(), (1, 1, self.dim))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.dim)), x], axis=1)
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, x.shape[1], self.dim))
    x = x + pos
    for i in range(self.depth):
      h = nn.LayerNorm(name=f"block{i}_ln1")(x)
      x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name=f"block{i}_attn")(h, h)
      h = nn.LayerNorm(name=f"block{i}_ln2")(x)
      h = nn.Dense(self.mlp_ratio * self.dim, name=f"block{i}_fc")(h)
      x = x + nn.Dense(self.dim, name=f"block{i}_proj")(nn.gelu(h))
    return nn.Dense(self.num_classes, name="head")(nn.LayerNorm(name="ln_f")(x)[:, 0])


class NNXTutorialCNN(nnx.Module):
  """The CNN of Flax's NNX MNIST tutorial, as written there (BatchNorm, dropout, average pooling)."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
    self.batch_norm1 = nnx.BatchNorm(32, rngs=rngs)
    self.dropout1 = nnx.Dropout(rate=0.025, rngs=rngs)
    self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
    self.batch_norm2 = nnx.BatchNorm(64, rngs=rngs)
    self.linear1 = nnx.Linear(3136, 256, rngs=rngs)
    self.dropout2 = nnx.Dropout(rate=0.025, rngs=rngs)
    self.linear2 = nnx.Linear(256, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    def pool(y):
      return nnx.avg_pool(y, window_shape=(2, 2), strides=(2, 2))

    x = pool(nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x)))))
    x = pool(nnx.relu(self.batch_norm2(self.conv2(x))))
    x = x.reshape(x.shape[0], -1)
    x = nnx.relu(self.dropout2(self.linear1(x)))
    return self.linear2(x)


class ScanBlock(nn.Module):
  """A pre-LN transformer block with the ``(carry, x) -> (carry, y)`` signature ``nn.scan`` needs."""

  dim: int
  num_heads: int

  @nn.compact
  def __call__(self, x: jax.Array, _: Any) -> tuple[jax.Array, None]:
    h = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads)(h, h)
    h = nn.LayerNorm()(x)
    return x + nn.Dense(self.dim)(nn.gelu(nn.Dense(2 * self.dim)(h))), None


class ScanTransformer(nn.Module):
  """A transformer whose blocks are one ``nn.scan`` (parameters stacked on a leading layer axis), or, with
  ``scan=False``, the same blocks written out."""

  vocab_size: int = 12
  block_size: int = 5
  dim: int = 8
  num_heads: int = 2
  num_layers: int = 3
  scan: bool = True

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = nn.Embed(self.vocab_size, self.dim)(tokens)
    x = x + self.param("pos", nn.initializers.normal(0.02), (self.block_size, self.dim))[: tokens.shape[-1]]
    if self.scan:
      stack = nn.scan(ScanBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                      length=self.num_layers)
      x, _ = stack(self.dim, self.num_heads)(x, None)
    else:
      for _ in range(self.num_layers):
        x, _ = ScanBlock(self.dim, self.num_heads)(x, None)
    return nn.Dense(self.vocab_size)(nn.LayerNorm()(x))


__all__ = ["CNN", "GPT", "MLP", "Block", "NNXTutorialCNN", "ResCNN", "ResNet", "ScanBlock", "ScanTransformer",
           "ViT"]
