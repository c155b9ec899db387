"""The plug-in as a user installs it: GIMP 3 runs only an executable file named after its folder
(`plug-ins/neural-style/neural-style.py`); a non-executable one is skipped without a word, so a
copied folder would give nothing in the menu."""

import os
import subprocess
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN_DIR = os.path.join(HERE, "..", "neural-style")
PLUGIN = os.path.join(PLUGIN_DIR, "neural-style.py")


class InstallTest(unittest.TestCase):
    def test_named_after_its_folder_with_a_shebang(self):
        self.assertEqual(os.path.basename(os.path.normpath(PLUGIN_DIR)) + ".py", os.path.basename(PLUGIN))
        with open(PLUGIN, "rb") as f:
            self.assertEqual(f.readline().strip(), b"#!/usr/bin/env python3")

    def test_executable_in_the_checkout(self):
        self.assertTrue(os.access(PLUGIN, os.X_OK), f"{PLUGIN} is not executable")

    def test_executable_in_the_repository(self):
        """The mode git stores is what a clone or an archive gives users."""
        try:
            out = subprocess.run(
                ["git", "ls-files", "-s", "neural-style.py"],
                cwd=PLUGIN_DIR, capture_output=True, text=True, check=True,
            ).stdout
        except (OSError, subprocess.CalledProcessError):
            self.skipTest("not a git checkout")
        self.assertTrue(out.startswith("100755 "), f"git stores the plug-in as {out.split()[:1]}, not 100755")


if __name__ == "__main__":
    unittest.main()
