"""timm's RandAugment `rand-m9-mstd0.5-inc1` in TensorFlow ops, for the classification pipeline.

`rand_augment` draws `num_ops` operations per image from `RANDAUGMENT_OPS` (timm's
`_RAND_INCREASING_TRANSFORMS`, in timm's order) and applies each with probability 0.5 at a level
drawn from N(9, 0.5) with a random sign, mapped to each operation's argument as timm's
`*_level_to_arg` functions do. The operations follow the PIL functions timm calls on uint8
images (rounding, clipping, uncovered pixels filled with the ImageNet mean), and all randomness
is stateless, from one seed per image, so a parallel `tf.data` map stays reproducible. (Keras's
own `RandAugment` layer draws one list of operations per batch, with other ranges.)
"""

import math

import tensorflow as tf

from keras_hrvit.presets import IMAGENET_MEAN

# timm's `rand-m9-mstd0.5-inc1` operation set (`_RAND_INCREASING_TRANSFORMS`), in timm's order.
RANDAUGMENT_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
# timm fills pixels uncovered by geometric ops with the ImageNet mean in 0-255 (`img_mean`).
_RANDAUGMENT_FILL = tuple(float(round(m)) for m in IMAGENET_MEAN)


def _split_seed(seed, num):
    """`num` independent stateless seeds from one (also used by the classification pipeline)."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def _blend(degenerate, image, factor):
    return tf.clip_by_value(tf.round(degenerate + factor * (image - degenerate)), 0.0, 255.0)


def _luminance(image):
    # PIL's RGB -> L conversion.
    return tf.round(tf.reduce_sum(image * [0.299, 0.587, 0.114], axis=-1, keepdims=True))


def _affine(image, matrix, fill=_RANDAUGMENT_FILL):
    """PIL `Image.transform(AFFINE, matrix)`: output pixel (x, y) samples input (a x + b y + c,
    d x + e y + f). Uncovered pixels get `fill` (per channel)."""
    fill = tf.constant(fill, tf.float32)
    transform = tf.concat([tf.cast(matrix, tf.float32), tf.zeros([2])], axis=0)[None]
    # The op fills with one scalar: shift so that the per-channel fill becomes 0.
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=(image - fill)[None],
        transforms=transform,
        output_shape=tf.shape(image)[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return tf.clip_by_value(tf.round(out[0] + fill), 0.0, 255.0)


def _rotate(image, degrees):
    theta = degrees * math.pi / 180.0
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    cy, cx = (size[0] - 1) / 2, (size[1] - 1) / 2
    cos, sin = tf.cos(theta), tf.sin(theta)
    matrix = [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy]
    return _affine(image, tf.stack(matrix))


def _sharpness_degenerate(image):
    # PIL's ImageFilter.SMOOTH (3x3 kernel, centre 5, sum 13); PIL leaves the border untouched.
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
    smooth = tf.round(smooth)
    inner = tf.pad(tf.ones_like(smooth), [[1, 1], [1, 1], [0, 0]])
    return tf.where(inner > 0, tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]), image)


def _auto_contrast(image):
    # PIL ImageOps.autocontrast(cutoff=0): stretch each channel to [0, 255].
    lo = tf.reduce_min(image, axis=[0, 1], keepdims=True)
    hi = tf.reduce_max(image, axis=[0, 1], keepdims=True)
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    stretched = tf.clip_by_value(tf.floor((image - lo) * scale), 0.0, 255.0)
    return tf.where(hi > lo, stretched, image)


def _equalize_channel(channel):
    # PIL ImageOps.equalize: lut[i] = (step // 2 + #pixels below i) // step, where step is the
    # pixel count without the last non-empty bin, divided by 255.
    values = tf.cast(channel, tf.int32)
    hist = tf.math.bincount(values, minlength=256, maxlength=256)
    last = tf.gather(hist, tf.reduce_max(tf.where(hist > 0)))
    step = (tf.reduce_sum(hist) - last) // 255
    lut = (tf.cumsum(hist, exclusive=True) + step // 2) // tf.maximum(step, 1)
    lut = tf.cast(tf.clip_by_value(lut, 0, 255), tf.float32)
    return tf.where(step > 0, tf.gather(lut, values), channel)


def _equalize(image):
    return tf.stack([_equalize_channel(image[..., c]) for c in range(3)], axis=-1)


def _posterize(image, bits):
    # Keep the top `bits` bits; 0 bits gives black, like PIL's posterize.
    step = tf.pow(2.0, 8.0 - tf.cast(bits, tf.float32))
    return tf.floor(image / step) * step


# Traced once per process and called as a function: fifteen branches are slow to build into every
# pipeline's graph, twice per image.
@tf.function(
    input_signature=[
        tf.TensorSpec([], tf.int32),
        tf.TensorSpec([None, None, 3], tf.float32),
        tf.TensorSpec([], tf.float32),
        tf.TensorSpec([], tf.float32),
    ],
    autograph=False,
)
def _randaugment_op(index, image, magnitude, sign):
    """Applies op `RANDAUGMENT_OPS[index]` at timm level `magnitude` (0-10) and sign (+-1)."""
    level = magnitude / 10.0
    enhance = tf.maximum(0.1, 1.0 + sign * level * 0.9)  # timm _enhance_increasing_level_to_arg
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    shear = sign * level * 0.3
    shift = sign * level * 0.45  # timm translate_pct

    # Argument ranges at level 10 are timm's `*_level_to_arg` functions.
    ops = {
        "AutoContrast": lambda: _auto_contrast(image),
        "Equalize": lambda: _equalize(image),
        "Invert": lambda: 255.0 - image,
        "Rotate": lambda: _rotate(image, sign * level * 30.0),
        "PosterizeIncreasing": lambda: _posterize(image, 4 - tf.floor(level * 4)),
        "SolarizeIncreasing": lambda: tf.where(
            image >= 256 - tf.floor(level * 256), 255.0 - image, image
        ),
        "SolarizeAdd": lambda: tf.where(
            image < 128, tf.minimum(image + tf.floor(level * 110), 255.0), image
        ),
        "ColorIncreasing": lambda: _blend(_luminance(image), image, enhance),
        "ContrastIncreasing": lambda: _blend(
            tf.floor(tf.reduce_mean(_luminance(image)) + 0.5), image, enhance
        ),
        "BrightnessIncreasing": lambda: _blend(tf.zeros_like(image), image, enhance),
        "SharpnessIncreasing": lambda: _blend(_sharpness_degenerate(image), image, enhance),
        "ShearX": lambda: _affine(image, tf.stack([1.0, shear, 0.0, 0.0, 1.0, 0.0])),
        "ShearY": lambda: _affine(image, tf.stack([1.0, 0.0, 0.0, shear, 1.0, 0.0])),
        "TranslateXRel": lambda: _affine(image, tf.stack([1.0, 0.0, shift * width, 0.0, 1.0, 0.0])),
        "TranslateYRel": lambda: _affine(
            image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, shift * height])
        ),
    }
    branches = [ops[name] for name in RANDAUGMENT_OPS]
    out = tf.switch_case(index, branches)
    out.set_shape(image.shape)
    return out


def rand_augment(image, seed, num_ops=2, magnitude=9.0, magnitude_std=0.5, prob=0.5):
    """timm's RandAugment (`rand-m{magnitude}-mstd{magnitude_std}-inc1`) on one image.

    Picks `num_ops` operations of `RANDAUGMENT_OPS` uniformly with replacement; each is applied
    with probability `prob` at a level drawn from N(magnitude, magnitude_std) clipped to [0, 10]
    and a random sign, mapped to each op's range exactly as timm does (rotate 30 degrees, shear
    0.3, translate 45 % of the size, enhance factor 1 +- 0.9, ... at level 10). Only the chosen
    branch runs, so the cost is that of `num_ops` ops, not of all fifteen.

    Args:
        image: float `[H, W, 3]` in 0-255 (integral values, as PIL's uint8).
        seed: stateless seed, int `[2]`.

    Returns:
        The augmented float32 image, integral values in 0-255.

    Example:
    >>> image = tf.fill([32, 32, 3], 100.0)
    >>> rand_augment(image, seed=tf.constant([1, 2])).shape
    TensorShape([32, 32, 3])
    """
    image = tf.cast(image, tf.float32)
    for i in range(num_ops):
        s_op, s_apply, s_level, s_sign = _split_seed(
            tf.random.experimental.stateless_fold_in(seed, i), 4
        )
        index = tf.random.stateless_uniform([], s_op, 0, len(RANDAUGMENT_OPS), dtype=tf.int32)
        apply = tf.random.stateless_uniform([], s_apply) < prob
        level = magnitude + magnitude_std * tf.random.stateless_normal([], s_level)
        level = tf.clip_by_value(level, 0.0, 10.0)
        sign = tf.where(tf.random.stateless_uniform([], s_sign) < 0.5, -1.0, 1.0)
        image = tf.cond(
            apply,
            lambda image=image, index=index, level=level, sign=sign: _randaugment_op(
                index, image, level, sign
            ),
            lambda image=image: image,
        )
    return image
