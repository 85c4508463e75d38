"""CelebA (Liu et al., 2015): 40 binary face attributes as 40 tasks, read from the tfds
``celeb_a`` builder as array_record through ``tfds.data_source`` (no TensorFlow).

Splits: the official partition (``list_eval_partition.txt``), tfds 'train' / 'validation' /
'test' (162 770 / 19 867 / 19 962 images), named 'train' / 'val' / 'test' here.

Record (one image, lazily decoded and resized)::

    inputs  float32 [S, S, 3] in [0, 1]:  resize_bilinear(image) / 255,  S = image_size
    labels  {attribute: float32 0. or 1.}  (tfds's bool attributes; CelebA's -1 / 1)
    masks   {attribute: True}              (CelebA labels every attribute of every image)

Images are aligned 218 x 178 (H x W) JPEGs.  By default the whole image is resized to S x S
with PIL bilinear (antialiased when shrinking), as FAMO's ``transforms.Resize((64, 64))``
followed by ``ToTensor`` does (aspect ratio not kept; no normalisation).  ``center_crop=True``
first crops the central 178 x 178 square (rows 20:198), keeping the aspect ratio.

Registered as the data set 'celeb_a' (``mtl_jax.data.load('celeb_a', data_dir=..., ...)``,
``make_celeb_a``: all three splits); ``load`` also reads a subset of (sliced) splits.
"""

from typing import Optional, Sequence

import numpy as np

from mtl_jax._src import registry
from mtl_jax._src import tasks as tasks_lib
from mtl_jax._src.data.dataset import MultiTaskDataset
from mtl_jax._src.data.sources import RecordSource

# The tfds ``celeb_a`` attribute keys, in tfds order (that of ``list_attr_celeba.txt``).
ATTRIBUTES = (
    '5_o_Clock_Shadow', 'Arched_Eyebrows', 'Attractive', 'Bags_Under_Eyes', 'Bald', 'Bangs',
    'Big_Lips', 'Big_Nose', 'Black_Hair', 'Blond_Hair', 'Blurry', 'Brown_Hair',
    'Bushy_Eyebrows', 'Chubby', 'Double_Chin', 'Eyeglasses', 'Goatee', 'Gray_Hair',
    'Heavy_Makeup', 'High_Cheekbones', 'Male', 'Mouth_Slightly_Open', 'Mustache',
    'Narrow_Eyes', 'No_Beard', 'Oval_Face', 'Pale_Skin', 'Pointy_Nose', 'Receding_Hairline',
    'Rosy_Cheeks', 'Sideburns', 'Smiling', 'Straight_Hair', 'Wavy_Hair', 'Wearing_Earrings',
    'Wearing_Hat', 'Wearing_Lipstick', 'Wearing_Necklace', 'Wearing_Necktie', 'Young')

# tfds split name -> split name in the data set (the trainer evaluates 'val' and 'test').
SPLITS = {'train': 'train', 'validation': 'val', 'test': 'test'}

PREPARE_INSTRUCTIONS = """\
The tfds `celeb_a` data must be prepared (as array_record) before it can be read, and its files
need a manual download: tfds fetches them from Google Drive, which usually refuses (quota).
Download from the CelebA page (http://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, "Align&Cropped
Images" and the annotation files) these five files, under exactly these names:
  img_align_celeba.zip, list_eval_partition.txt, list_attr_celeba.txt,
  list_landmarks_align_celeba.txt, identity_CelebA.txt
put them in the tfds manual dir <data_dir>/downloads/manual/ and prepare the data with
  mtl_jax.data.load('celeb_a', data_dir=<data_dir>, download=True)
(or `tfds build celeb_a --data_dir=<data_dir> --file_format=array_record`)."""


def preprocess_image(image, image_size: int, center_crop: bool = False) -> np.ndarray:
  """A uint8 [H, W, 3] image as float32 [S, S, 3] in [0, 1] (see the module docstring)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
    raise ValueError(f"field 'image': expected an RGB image [H, W, 3], got shape "
                     f'{tuple(image.shape)}')
  if image.dtype != np.uint8:
    raise ValueError(f"field 'image': expected uint8 pixels, got {image.dtype}")
  if center_crop:
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = image[top:top + side, left:left + side]
  resized = Image.fromarray(image).resize((image_size, image_size), Image.BILINEAR)
  return np.asarray(resized, np.float32) / 255.0


def _select(attributes: Optional[Sequence[str]]) -> tuple[str, ...]:
  if attributes is None:
    return ATTRIBUTES
  if isinstance(attributes, str):
    attributes = (attributes,)
  names = tuple(attributes)
  unknown = [a for a in names if a not in ATTRIBUTES]
  if unknown:
    raise ValueError(f'celeb_a: unknown attribute(s) {unknown}; valid attributes are '
                     f'{list(ATTRIBUTES)}')
  if not names or len(set(names)) != len(names):
    raise ValueError(f'celeb_a: attributes must be distinct names, got {list(names)}')
  return names


def _split_name(split: str) -> tuple[str, str]:
  """('validation[:10%]' ->) the tfds split and the data-set split name ('val')."""
  base, _, rest = split.partition('[')
  base = 'validation' if base == 'val' else base
  if base not in SPLITS:
    raise ValueError(f'celeb_a: unknown split {split!r}; splits are {list(SPLITS)} '
                     "(optionally sliced, e.g. 'train[:10%]')")
  return base + (f'[{rest}' if rest else ''), SPLITS[base]


def make_transform(attributes: Sequence[str], image_size: int, center_crop: bool = False):
  """The tfds example -> record transform of a split."""

  def transform(example) -> dict:
    values = example['attributes']
    missing = [a for a in attributes if a not in values]
    if missing:
      raise ValueError(f"field 'attributes' has no {missing}")
    return {
        'inputs': preprocess_image(example['image'], image_size, center_crop),
        'labels': {a: np.float32(bool(values[a])) for a in attributes},
        'masks': {a: np.bool_(True) for a in attributes},
    }

  return transform


def load(data_dir: Optional[str] = None, *, image_size: int = 64,
         attributes: Optional[Sequence[str]] = None, download: bool = False,
         splits: Sequence[str] = ('train', 'validation', 'test'),
         center_crop: bool = False) -> MultiTaskDataset:
  """CelebA as a ``MultiTaskDataset`` 'celeb_a' of lazy splits, one ``binary`` task per attribute.

  Args:
    data_dir: the tfds data dir (None: tfds's default, ``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``).
    image_size: S, the side of the square input images.
    attributes: the tasks, a subset of ``ATTRIBUTES`` in the order given (default all 40).
    download: prepare the data first if needed (see ``PREPARE_INSTRUCTIONS``).
    splits: tfds splits ('train', 'validation' or 'val', 'test'), optionally sliced
      ('train[:1000]'); the data set names them 'train', 'val', 'test'.
    center_crop: crop the central square before resizing (default: resize the whole image).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if type(image_size) is not int or image_size < 1:
    raise ValueError(f'celeb_a: image_size must be a positive integer, got {image_size!r}')
  names = _select(attributes)
  chosen = [_split_name(s) for s in splits]
  taken = [name for _, name in chosen]
  if not chosen or len(set(taken)) != len(taken):
    raise ValueError(f'celeb_a: splits must name distinct splits, got {list(splits)}')
  transform = make_transform(names, image_size, center_crop)
  where = data_dir if data_dir is not None else '(the tfds default data dir)'
  result = {}
  for tfds_split, name in chosen:
    try:
      source = tfds.data_source('celeb_a', split=tfds_split, data_dir=data_dir,
                                download=download,
                                builder_kwargs={'file_format': 'array_record'})
    except ImportError as e:  # tfds 4.9.10 prepares data with importlib_resources
      raise ImportError(f'celeb_a: tfds needs the module {e.name!r} to prepare split '
                        f'{tfds_split!r} in data_dir {where}: pip install {e.name}') from e
    except Exception as e:  # pylint: disable=broad-except
      raise FileNotFoundError(
          f'celeb_a: cannot read split {tfds_split!r} from data_dir {where}: '
          f'{type(e).__name__}: {e}\n{PREPARE_INSTRUCTIONS}') from e
    result[name] = RecordSource(source, transform, f'celeb_a/{name}')
  tasks = tasks_lib.TaskSet([tasks_lib.binary(a) for a in names])
  return MultiTaskDataset('celeb_a', tasks, result)


@registry.DATASETS.register('celeb_a')
def make_celeb_a(data_dir: Optional[str] = None, *, image_size: int = 64,
                 attributes: tuple[str, ...] = (), download: bool = False,
                 center_crop: bool = False) -> MultiTaskDataset:
  """CelebA's train / val / test splits (``load`` over all three); ``attributes=()``: all 40."""
  return load(data_dir, image_size=image_size, attributes=attributes or None,
              download=download, center_crop=center_crop)
