"""The scripts in scripts/, each run as its command line would, in this process: the ImageNet archives and their
preparation (the `imagenet` fixture in conftest.py, which test_data.py trains on) and the TPU VM launcher's dry run."""
import io
import os
import re
import tarfile

import PIL.Image
import pytest

from conftest import run_script


def members(tar: tarfile.TarFile) -> dict[str, bytes]:
  return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_imagenet_archives_have_the_ilsvrc2012_layout_and_its_odd_files(imagenet):
  with tarfile.open(os.path.join(imagenet.manual_dir, 'ILSVRC2012_img_train.tar')) as train:
    inner = members(train)
  # one tar per synset, each holding SYNSET_N.JPEG files, as in the real archive
  assert sorted(inner) == ['n01440764.tar', 'n01443537.tar', 'n01739381.tar', 'n02105855.tar']
  images = {}
  for name, data in inner.items():
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
      files = members(t)
    assert len(files) == 6 and all(re.fullmatch(name[:-4] + r'_\d+\.JPEG', f) for f in files), files
    images.update({f: PIL.Image.open(io.BytesIO(b)) for f, b in files.items()})
  with tarfile.open(os.path.join(imagenet.manual_dir, 'ILSVRC2012_img_val.tar')) as val:
    val_files = members(val)
  assert sorted(val_files) == [f'ILSVRC2012_val_{i:08d}.JPEG' for i in range(1, 9)]
  # the real archives' oddities: a CMYK JPEG and a PNG named .JPEG among the train files (tfds converts them),
  # grey JPEGs
  assert (images['n01739381_1309.JPEG'].format, images['n01739381_1309.JPEG'].mode) == ('JPEG', 'CMYK')
  assert images['n02105855_2933.JPEG'].format == 'PNG'
  assert {im.mode for im in images.values()} == {'RGB', 'L', 'CMYK'}
  assert max(max(im.size) for im in images.values()) <= 160  # --max_side
  # scripts/prepare_imagenet.py: tfds's real imagenet2012 builder read every file, then the squares were made
  assert re.search(r"imagenet2012 prepared in .*: \{'train': 24, 'validation': 8\}", imagenet.prepare_output)
  assert re.search(r"squares prepared in .*: \{'train': 24, 'validation': 8\}", imagenet.prepare_output)


def test_prepare_imagenet_without_the_archives_says_where_to_get_them(tmp_path):
  with pytest.raises(SystemExit, match=r'ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar not found in .* download '
                                       r'from https://image-net.org'):
    run_script('prepare_imagenet.py', '--manual_dir', str(tmp_path))


def test_tpu_vm_dry_run_prints_each_gcloud_command():
  run = lambda *a: run_script('tpu_vm.py', '--name', 'zf', '--zone', 'z1', '--dry-run', *a).strip()  # noqa: E731
  assert run('create', '--accelerator', 'v4-32', '--preemptible') == (
      'gcloud compute tpus tpu-vm create zf --zone=z1 --accelerator-type=v4-32 --version=tpu-ubuntu2204-base '
      '--preemptible')
  # run: on every worker at once, in the background, with --distributed
  assert run('run', '--', '--config', 'configs/default.py', '--workdir', '/mnt/w').splitlines() == [
      "gcloud compute tpus tpu-vm ssh zf --zone=z1 --worker=all --command 'cd zfnet_jax && nohup "
      ".venv/bin/python -m zfnet_jax.train --config configs/default.py --workdir /mnt/w --distributed "
      "> ~/zfnet_train.log 2>&1 &'"]
  # copy: the committed tree to every worker, then the pinned stack with jax[tpu]
  archive, scp, install = run('copy').splitlines()
  assert archive.startswith('git -C ') and ' archive --format=tar.gz -o /tmp/zfnet_jax.tar.gz HEAD' in archive
  assert scp == "gcloud compute tpus tpu-vm scp /tmp/zfnet_jax.tar.gz 'zf:~/' --zone=z1 --worker=all"
  assert install.startswith('gcloud compute tpus tpu-vm ssh zf --zone=z1 --worker=all --command ')
  assert 'pip install -q -r requirements.txt' in install and 'jax[tpu]==0.10.2' in install
  # logs from worker 0; delete without a prompt; a project when given
  assert run('logs', '--to', 'out').splitlines() == [
      'mkdir -p out', "gcloud compute tpus tpu-vm scp 'zf:~/zfnet_train.log' out/zfnet_train.log --zone=z1 --worker=0"]
  assert run('delete', '--project', 'p') == 'gcloud compute tpus tpu-vm delete zf --zone=z1 --project=p --quiet'
  with pytest.raises(SystemExit):  # run without the training arguments is a usage error
    run('run')
