"""The training-throughput benchmark times the same model on both sides."""

from official_spinenet.workflows import train_throughput


def test_demo_config_trains_the_same_model_on_both_sides():
  # Model Garden's side is built from their SpineNet class with the demo's widths and
  # the found architecture's block specs (their configs have neither): the parameter
  # counts must match ours, 1,279,249 for the backbone and heads the demo trains.
  config = train_throughput.CONFIGS['demo']
  batch = train_throughput.one_batch(2, config)
  assert batch[0].shape == (2, 128, 128, 3)
  _, ours_params = train_throughput.our_loop(batch, 1, config)
  _, their_params = train_throughput.model_garden_loop(batch, 1, config)
  assert ours_params == their_params, (ours_params, their_params)
