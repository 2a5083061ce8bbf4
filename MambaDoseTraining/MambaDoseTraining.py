"""MambaDose Training: OpenKBP preprocessing, training and evaluation without a GUI (hidden module).

Run it headless with the same sub-commands and arguments as ``mambadose``::

    Slicer --no-main-window --python-script MambaDoseTraining/MambaDoseTraining.py train --help

The work is ``MambaDoseLib.cli.main`` restricted to :data:`COMMANDS`; the exit code is its.
"""

import os
import sys

#: the sub-commands this module offers (a subset of ``MambaDoseLib.cli.COMMANDS``)
COMMANDS = ("preprocess", "train", "evaluate")


def libraryPaths(moduleDir: str) -> list[str]:
    """Folders holding MambaDoseTrainingLib and MambaDoseLib, for the source tree and the installed layout.

    Installed, both library packages sit in the scripted-modules folder beside this file; in the
    source tree MambaDoseLib is in ``../MambaDosePrediction``.
    """
    candidates = [moduleDir, os.path.join(os.path.dirname(moduleDir), "MambaDosePrediction")]
    return [path for path in candidates if os.path.isdir(path)]


def addLibraryPaths(moduleDir: str) -> None:
    for path in libraryPaths(moduleDir):
        if path not in sys.path:
            sys.path.insert(0, path)


def main(argv: list[str]) -> int:
    """Run one of :data:`COMMANDS` with ``argv`` (as ``mambadose``); returns the exit code."""
    # Slicer's --python-script sets __file__; sys.argv[0] (the script) is the fallback
    addLibraryPaths(os.path.dirname(os.path.abspath(globals().get("__file__") or sys.argv[0])))
    from MambaDoseLib import cli

    return cli.main(argv, commands={name: cli.COMMANDS[name] for name in COMMANDS})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


# The Slicer module: only defined inside Slicer (a plain Python has no ``slicer``).
try:
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
    )
except ImportError:  # run as a script outside Slicer
    ScriptedLoadableModule = None

if ScriptedLoadableModule is not None:

    class MambaDoseTraining(ScriptedLoadableModule):
        def __init__(self, parent):
            ScriptedLoadableModule.__init__(self, parent)
            self.parent.title = "MambaDose Training"
            self.parent.categories = ["Radiotherapy"]
            self.parent.dependencies = []
            self.parent.contributors = ["MambaDose contributors"]
            self.parent.helpText = (
                "Headless OpenKBP preprocessing, training and evaluation for MambaDose. Run: "
                "Slicer --no-main-window --python-script MambaDoseTraining.py "
                + " | ".join(COMMANDS)
                + " ..."
            )
            self.parent.acknowledgementText = "Uses the OpenKBP head-and-neck dose prediction challenge data."
            self.parent.hidden = True

    class MambaDoseTrainingLogic(ScriptedLoadableModuleLogic):
        """Runs a sub-command from Python inside Slicer: ``MambaDoseTrainingLogic().run(["train", ...])``."""

        def run(self, argv: list[str]) -> int:
            return main(argv)

    class MambaDoseTrainingTest(ScriptedLoadableModuleTest):
        def runTest(self):
            self.test_HelpOfEachCommand()

        def test_HelpOfEachCommand(self):
            for command in COMMANDS:
                with self.assertRaises(SystemExit) as raised:
                    main([command, "--help"])
                self.assertEqual(raised.exception.code, 0)
