"""`python -m keras_ddpm.cli`: the `keras-ddpm` command."""
import sys

from keras_ddpm.cli import main

sys.exit(main())
