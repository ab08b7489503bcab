"""Every `python -m zfnet_jax.visualize` command on a real (short) digits checkpoint writes its figures."""
import os
import re

import numpy as np
import pytest

from conftest import config_path
from zfnet_jax import visualize

COMMANDS = {
    'project': ['--layer', '3'],  # the strongest activation of layer 3
    'topk': ['--layers', '1,5', '--maps', '3', '--max_images', '40'],
    'filters': [],
    'occlusion': ['--index', '3', '--size', '16', '--stride', '12'],
    'correspondence': ['--label', '0', '--count', '3', '--box', '0,0,32,64', '--random_draws', '2'],
    'invariance': ['--count', '2'],
    'evolution': ['--layers', '2', '--maps', '2', '--max_images', '40'],
}
EXPECTED = {
    'project': [],  # named after the map and position found; checked below
    'topk': ['topk_layer1.npz', 'topk_layer1.png', 'topk_layer5.npz', 'topk_layer5.png'],
    'filters': ['filters_layer1.npy', 'filters_layer1.png'],
    'occlusion': ['occlusion.npz', 'occlusion.png'],
    'correspondence': ['correspondence.npz', 'correspondence.png'],
    'invariance': ['invariance.npz', 'invariance.png'],
    'evolution': ['evolution.npz', 'evolution.png'],
}


@pytest.mark.parametrize('command', sorted(COMMANDS))
def test_command_writes_its_figures_and_arrays(command, trained_digits, tmp_path, capsys):
  config, workdir = trained_digits
  out = str(tmp_path / command)
  visualize.main([command, '--config', config_path('digits'), f'--config.dataset.data_dir={config.dataset.data_dir}',
                  '--workdir', workdir, '--out', out, *COMMANDS[command]])
  printed = capsys.readouterr().out
  for name in EXPECTED[command]:
    path = os.path.join(out, name)
    assert path in printed
    with open(path, 'rb') as f:
      head = f.read(8)
    assert head == b'\x89PNG\r\n\x1a\n' if name.endswith('.png') else len(head) == 8
  if command == 'project':
    name, = [n for n in os.listdir(out) if n.endswith('.npy')]
    assert re.fullmatch(r'project_layer3_map\d+_y\d_x\d\.npy', name) and os.path.join(out, name) in printed
    assert os.path.exists(os.path.join(out, name[:-4] + '.png'))
    recon = np.load(os.path.join(out, name))
    assert recon.shape == (64, 64, 1) and recon.dtype == np.float32 and np.abs(recon).max() > 0
    visualize.main(['project', '--config', config_path('digits'), '--workdir', workdir, '--out', out,
                    f'--config.dataset.data_dir={config.dataset.data_dir}', '--layer', '1', '--channel', '2',
                    '--position', '4', '5', '--index', '7'])
    assert os.path.exists(os.path.join(out, 'project_layer1_map2_y4_x5.png'))
  if command == 'topk':
    arrays = np.load(os.path.join(out, 'topk_layer5.npz'))
    assert arrays['reconstruction'].shape == (3, 9, 64, 64, 1)
    assert arrays['all_value'].shape == (64, 9) and np.all(np.diff(arrays['all_value'], axis=1) <= 0)
    assert arrays['image'].max() < 40  # --max_images


def test_bad_arguments_say_what_to_do(trained_digits, tmp_path):
  config, workdir = trained_digits
  common = ['--config', config_path('digits'), '--workdir', workdir, '--out', str(tmp_path)]
  with pytest.raises(SystemExit):
    visualize.main(['project', *common, '--layer', '2', '--config.no_such_field=1'])
  with pytest.raises(ValueError, match='conv layer'):
    visualize.main(['project', *common, f'--config.dataset.data_dir={config.dataset.data_dir}', '--layer', '9'])
  bad = tmp_path / 'wrong.npy'
  np.save(bad, np.zeros((32, 32, 1), np.float32))
  with pytest.raises(ValueError, match=r'float32 \[64, 64, 1\]'):
    visualize.main(['occlusion', *common, '--image', str(bad)])
