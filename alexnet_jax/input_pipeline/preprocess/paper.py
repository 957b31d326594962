"""The paper's preprocessing numbers, shared by the host (tf.data) and device (JAX) ops."""
import numpy as np

RESIZE = 256  # the shorter side, then the central square: the paper's 256x256 images
CROP = 224  # the patches the network sees

# ImageNet's RGB covariance for pixels in [0, 1]: eigenvalues and eigenvectors (columns),
# as published with fb.resnet.torch (datasets/imagenet.lua), computed on ImageNet's
# training set; the paper does not list its numbers.
PCA_EIGENVALUES = np.array([0.2175, 0.0188, 0.0045], np.float32)
PCA_EIGENVECTORS = np.array([[-0.5675, 0.7192, 0.4009],
                             [-0.5808, -0.0045, -0.8140],
                             [-0.5836, -0.6948, 0.4203]], np.float32)
PCA_ALPHA_STD = 0.1  # "alpha_i ~ N(0, 0.1)"

# The 10-patch evaluation: the four corners and the centre, then their mirror images.
TEN_CROP_NAMES = ("top_left", "top_right", "bottom_left", "bottom_right", "center",
                  "top_left_flipped", "top_right_flipped", "bottom_left_flipped",
                  "bottom_right_flipped", "center_flipped")
CENTER_VIEW = TEN_CROP_NAMES.index("center")


def corners(size: int = RESIZE, crop: int = CROP) -> list[tuple[int, int]]:
    """The (y, x) corners of the four corner patches and the centre patch."""
    edge, middle = size - crop, (size - crop) // 2
    return [(0, 0), (0, edge), (edge, 0), (edge, edge), (middle, middle)]
