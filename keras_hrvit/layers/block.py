"""The HRViT transformer block."""

import keras

from keras_hrvit.layers.attention import CrossShapedAttention
from keras_hrvit.layers.common import check_positive_int, layer_norm, register
from keras_hrvit.layers.des import DES
from keras_hrvit.layers.drop_path import DropPath
from keras_hrvit.layers.mixcfn import MixCFN


@register
class HRViTBlock(keras.layers.Layer):
    """`x + DropPath(Attention(LN(x)) + DES(x))`, then `x + DropPath(MixCFN(LN(x)))`.

    Args:
        dim: channels.
        window_size: stripe width of the cross-shaped attention.
        head_dim: attention head size.
        mlp_ratio: MixCFN expansion.
        drop_path_rate: stochastic depth rate of both residual branches.
        remat: recompute the block's activations in the backward pass instead of storing them
            (the original's `with_cp`).

    Example:
    >>> HRViTBlock(32, window_size=7, head_dim=16)(keras.ops.ones((1, 20, 20, 32))).shape
    (1, 20, 20, 32)
    """

    def __init__(
        self,
        dim,
        window_size,
        head_dim=32,
        mlp_ratio=4.0,
        drop_path_rate=0.0,
        remat=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.remat = bool(remat)
        self.dim = check_positive_int(dim, "dim")
        self.window_size = window_size
        self.head_dim = head_dim
        self.mlp_ratio = mlp_ratio
        self.drop_path_rate = drop_path_rate
        policy = self.dtype_policy
        self.attn_norm = layer_norm("attn_norm", dtype=policy)
        self.attn = CrossShapedAttention(dim, window_size, head_dim, name="attn", dtype=policy)
        self.des = DES(dim, name="des", dtype=policy)
        self.ffn_norm = layer_norm("ffn_norm", dtype=policy)
        self.ffn = MixCFN(dim, mlp_ratio, name="ffn", dtype=policy)
        self.drop_path = DropPath(drop_path_rate, name="drop_path", dtype=policy)

    def build(self, input_shape):
        for layer in (self.attn_norm, self.attn, self.des, self.ffn_norm, self.ffn, self.drop_path):
            layer.build(input_shape)

    def call(self, x, training=None):
        if self.remat:
            return self._rematerialized_forward(x, training)
        return self._forward(x, training)

    def _rematerialized_forward(self, x, training):
        # keras.remat around a function of the tensor alone, not keras.RematScope: Keras passes
        # `training` as a keyword, which TensorFlow's recompute_grad rejects in graphs.
        # The block's state (the attention BatchNorm's moving statistics, DropPath's seed) is
        # read and written in a StatelessScope: the recomputation in the backward pass must see
        # the state the forward pass saw and change nothing, or it updates the statistics twice
        # and draws other drop-path masks than the forward pass (wrong gradients), and on JAX the
        # writes leak tracers out of jax.checkpoint. The new state is returned and assigned here.
        state = self.non_trainable_variables
        # Copies: PyTorch's assign below writes into the tensor that `value` returns.
        mapping = [(v, keras.ops.copy(v.value)) for v in state]
        if keras.backend.backend() == "jax":
            # The trainer's own StatelessScope holds the (traced) values of the weights, and the
            # nested scope hides it. Elsewhere the weights are read inside the function, where
            # recompute_grad and autograd see them.
            mapping += [(v, v.value) for v in self.trainable_variables]
        updated = []

        def forward(t):
            with keras.StatelessScope(state_mapping=mapping) as scope:
                before = [scope.get_current_value(v) for v in state]
                y = self._forward(t, training)
            # Only what the forward pass wrote: the mapped values of frozen weights were read
            # through autocasting (rounded to the compute dtype) and must not be written back.
            after = [scope.get_current_value(v) for v in state]
            updated[:] = [i for i, (b, a) in enumerate(zip(before, after)) if a is not b]
            return (y,) + tuple(after[i] for i in updated)

        y, *new_values = keras.remat(forward)(x)
        for i, value in zip(updated, new_values):
            state[i].assign(value)
        return y

    def _forward(self, x, training):
        y = self.attn(self.attn_norm(x), training=training) + self.des(x)
        x = x + self.drop_path(y, training=training)
        return x + self.drop_path(self.ffn(self.ffn_norm(x)), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            dim=self.dim,
            window_size=self.window_size,
            head_dim=self.head_dim,
            mlp_ratio=self.mlp_ratio,
            drop_path_rate=self.drop_path_rate,
            remat=self.remat,
        )
        return config
