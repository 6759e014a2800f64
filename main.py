"""Command line: `python main.py {fit,validate,test,predict} --config conf/<preset>.yaml`."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from datamodules.safety_mix import SafetyMixDataModule
from lightning_modules.safety_signal_lm import SafetySignalLM


class SafetyCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # The data is tokenized with the model's tokenizer and laid out for the model's phase.
        parser.link_arguments("model.model_name", "data.model_name")
        parser.link_arguments("model.phase", "data.phase")


def cli_main(args: list[str] | None = None, run: bool = True) -> SafetyCLI:
    return SafetyCLI(
        SafetySignalLM,
        SafetyMixDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


if __name__ == "__main__":
    cli_main()
