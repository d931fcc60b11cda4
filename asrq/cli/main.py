"""The ``asrq`` command line. Each area lives in its own module and only parses arguments
and calls the library; this file wires them together and turns :class:`AsrqError` into a
one-line message with exit code 2."""

from __future__ import annotations

import sys

import click

from asrq import __version__
from asrq.utils.io import AsrqError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):  # noqa: D102
        try:
            return super().invoke(ctx)
        except AsrqError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="asrq")
def cli() -> None:
    """asrq: train once, deploy many on-device speech recognizers.

    \b
    Typical flow (see recipes/mini for all of it in one script):
      asrq data synth --out data/mini           # espeak-ng corpus in LibriSpeech layout
      asrq data prepare librispeech --corpus-dir data/mini/LibriSpeech
      asrq data bpe --manifest-dir data/mini/manifests --vocab-size 256
      asrq train --config recipes/mini/config.yaml
      asrq decode exp/mini/model.pt
      asrq export exp/mini/model.pt --out exp/mini/export
      asrq transcribe exp/mini/export audio.wav
      asrq bench exp/mini/export --backend onnx --threads 1,2

    \b
    Train once, deploy many:
      asrq supernet train recipes/mini/supernet.yaml
      asrq search exp/mini_supernet/model.pt --budget-ms 5 --out exp/mini_supernet/search
      asrq slice exp/mini_supernet/model.pt --spec exp/mini_supernet/search/best_spec.yaml \\
        --out exp/mini_supernet/best
    """


def _register() -> None:
    from asrq.cli import bench, data, decode, device, export, qat, supernet, train, transcribe

    cli.add_command(data.data)
    cli.add_command(train.train)
    cli.add_command(decode.decode)
    cli.add_command(export.export)
    cli.add_command(transcribe.transcribe)
    cli.add_command(bench.bench)
    cli.add_command(supernet.supernet)
    cli.add_command(supernet.slice_)
    cli.add_command(supernet.search)
    cli.add_command(device.device)  # asrq device build / bench (asrq.device)
    cli.add_command(qat.qat)  # asrq qat train (asrq.quant)


_register()

if __name__ == "__main__":
    cli()
