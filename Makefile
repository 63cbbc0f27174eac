# Installers. Set-up and tests are the README's two commands; this file only packages.
.PHONY: package test-package package-clean

# The Linux installers in dist/: the one-folder bundle, a .tar.gz of it and a .deb (packaging/README.md).
# Needs scripts/setup.sh first; adds the `package` extra (PyInstaller) to .venv.
package:
	.venv/bin/python -m pip install --quiet --no-build-isolation -e ".[package]"
	bash packaging/build_linux.sh dist

# Builds everything again in a temporary folder, installs the .deb there and runs `glassbox --smoke`.
test-package:
	.venv/bin/python -m pip install --quiet --no-build-isolation -e ".[package]"
	.venv/bin/python -m pytest -s tests/packaging

package-clean:
	rm -rf dist/glassbox dist/.work dist/deb-root dist/glassbox-*.tar.gz dist/glassbox_*.deb
