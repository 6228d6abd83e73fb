"""`Dataset.map` without AutoGraph, for the package's own pipeline functions.

The pipelines write their control flow as TensorFlow ops (`tf.cond`, `tf.while_loop`,
`tf.where`); their Python `if`s and `for`s test Python values only. AutoGraph would rewrite
every such function's source the first time a process builds the pipeline, which costs seconds
per process and changes nothing in the graph (measured on a loaded 2-core CPU: 9.4 s against
1.9 s to build the segmentation training pipeline in a fresh process).
"""

import tensorflow as tf


def graph_map(ds, fn, num_parallel_calls=None):
    """`ds.map(fn, num_parallel_calls)` with `fn` traced as written (no AutoGraph).

    Example:
    >>> ds = graph_map(tf.data.Dataset.range(3), lambda x: x * 2)
    >>> [int(x) for x in ds]
    [0, 2, 4]
    """
    return ds.map(
        tf.autograph.experimental.do_not_convert(fn), num_parallel_calls=num_parallel_calls
    )
