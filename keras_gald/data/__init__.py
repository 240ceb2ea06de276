"""keras_gald.data: tf.data pipelines, dataset readers, augmentation, synthetic scenes.

Never imports `keras_gald.models`, `backbones` or `layers`.

Quick start:
    >>> from keras_gald import data
    >>> train = data.make_dataset(data.camvid("/data/camvid", "train"), crop_size=(360, 360),
    ...                           batch_size=8, seed=0)
    >>> val = data.make_eval_dataset(data.camvid("/data/camvid", "val"))
    >>> own = data.load_folder("my_data", val_fraction=0.2)   # images/ + labels/ + classes.txt
    >>> print(data.summarize(own).text())
    >>> toy = data.make_dataset(data.synthetic_source(256, 96, 128, seed=0),
    ...                         crop_size=(96, 128), batch_size=8, seed=0)
"""

from keras_gald.data import augment
from keras_gald.data.augment import (
    augment_pair,
    photometric_jitter,
    random_crop,
    random_flip,
    random_scale,
    pad_to_size,
)
from keras_gald.data.folder_dataset import (
    FolderDataset,
    FolderSummary,
    load_folder,
    parse_classes_file,
    read_split_file,
    split_names,
    suggest_training_sizes,
    summarize,
    write_split_file,
)
from keras_gald.data.info import (
    IGNORE_LABEL,
    DataLayoutError,
    DatasetInfo,
    DataSource,
    voc_palette,
)
from keras_gald.data.normalization import (
    BGR_MEAN,
    IMAGENET_MEAN,
    IMAGENET_STD,
    denormalize,
    normalize,
    to_uint8_rgb,
)
from keras_gald.data.pipeline import (
    colors_to_train_ids,
    load_color_pair,
    load_pair,
    make_dataset,
    make_eval_dataset,
)
from keras_gald.data.readers import (
    ADE20K_INFO,
    CAMVID_INFO,
    CITYSCAPES_INFO,
    CITYSCAPES_TRAINID_INFO,
    COCO_STUFF_INFO,
    COCO_STUFF_RAW_INFO,
    PASCAL_CONTEXT_INFO,
    ade20k,
    camvid,
    camvid_segnet,
    check_pairs,
    cityscapes,
    cityscapes_tfds,
    coco_stuff,
    folder,
    folder_pairs,
    pairs_from_list,
    pascal_context,
    read_class_names,
)
from keras_gald.data.synthetic import (
    SYNTHETIC_INFO,
    synthetic_arrays,
    synthetic_dataset,
    synthetic_scene,
    synthetic_source,
)
