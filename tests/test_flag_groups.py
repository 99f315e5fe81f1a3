"""Shared flag groups: integer lists are checked when the command line is parsed."""

from absl import flags
import pytest

from official_spinenet.utils import flags as flag_groups


def _flag_values():
  flag_values = flags.FlagValues()
  flag_groups.define_integer_list(
    'seeds', [0, 1, 2], 'Seeds.', lower_bound=0, flag_values=flag_values
  )
  flag_groups.define_integer_list('stem_levels', None, 'Levels.', flag_values=flag_values)
  return flag_values


def test_integer_lists_parse_defaults_and_command_lines():
  flag_values = _flag_values()
  flag_values(['prog'])
  assert flag_values.seeds == [0, 1, 2] and flag_values.stem_levels is None
  flag_values(['prog', '--seeds=3, 4,', '--stem_levels=2,2,3,3'])
  assert flag_values.seeds == [3, 4] and flag_values.stem_levels == [2, 2, 3, 3]
  assert flag_values['seeds'].serialize() == '--seeds=3,4'


@pytest.mark.parametrize(
  'argument, message',
  [
    ('--seeds=0,one', r"--seeds=0,one: 'one' is not an integer \(expected e.g. 1,2,3\)"),
    ('--seeds=2.5', r"--seeds=2.5: '2.5' is not an integer"),
    ('--seeds=1,-1', r'--seeds=1,-1: -1 is below the lowest allowed, 0'),
  ],
)
def test_a_bad_item_names_the_flag_and_the_item(argument, message):
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    _flag_values()(['prog', argument])
