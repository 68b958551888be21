"""``python -m diffedu.course``: copy the lessons into my-lessons/ (yours, ignored by git) and open JupyterLab."""

import sys

from diffedu.course.workspace import main

if __name__ == "__main__":
    sys.exit(main())
