"""Decoding an image into the paper's square (Section 2): the shorter side resized to
256 and the central 256x256 patch, decoding only that square of a JPEG.  Shared by the
store's preparation (``store.py``) and the preprocessing of full-size images
(``imagenet.py``)."""
from __future__ import annotations

from alexnet_jax.input_pipeline.preprocess.paper import RESIZE
from alexnet_jax.input_pipeline.tf_runtime import tf as _tf

# libjpeg's exact inverse DCT: TensorFlow's default, the fast one, is off by ~1.5/255 on
# average, more than the store's JPEG encoding at quality 95 loses.
ACCURATE_IDCT = "INTEGER_ACCURATE"


def central_square_window(height, width):
    """(offset_y, offset_x, side): the largest central square of a height x width image."""
    tf = _tf()
    side = tf.minimum(height, width)
    return (height - side) // 2, (width - side) // 2, side


def decode_and_center_crop(image_bytes, size: int = RESIZE):
    """Encoded image -> float32 [0, 1] RGB, the central square resized to size x size.

    Cropping the central square and then resizing it equals resizing the shorter side
    to ``size`` and cropping the centre, without decoding the discarded borders of a
    JPEG.  Other formats (PNG, GIF, BMP) are decoded whole and cropped.
    """
    tf = _tf()

    def jpeg():
        shape = tf.image.extract_jpeg_shape(image_bytes)
        offset_y, offset_x, side = central_square_window(shape[0], shape[1])
        window = tf.stack([offset_y, offset_x, side, side])
        return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3,
                                             dct_method=ACCURATE_IDCT)

    def other():
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        shape = tf.shape(image)
        offset_y, offset_x, side = central_square_window(shape[0], shape[1])
        return image[offset_y:offset_y + side, offset_x:offset_x + side]

    square = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
    resized = tf.image.resize(tf.cast(square, tf.float32) / 255.0, [size, size],
                              method="bilinear", antialias=True)
    return tf.reshape(tf.clip_by_value(resized, 0.0, 1.0), [size, size, 3])
