"""The exercise checks: one module per lesson (`lesson01` ... `lesson13`) on one shared core (`core`).

A lesson imports its own checks, ``from diffedu.course.checks import lesson01 as checks``, and hands each
exercise to one: ``q_sample = checks.check_q_sample(q_sample)``. This package also gathers every check
under one name (``from diffedu.course import checks``), as lesson 00 uses it.
"""

from diffedu.course.checks.core import *  # noqa: F401,F403
from diffedu.course.checks.lesson01 import *  # noqa: F401,F403
from diffedu.course.checks.lesson02 import *  # noqa: F401,F403
from diffedu.course.checks.lesson03 import *  # noqa: F401,F403
from diffedu.course.checks.lesson04 import *  # noqa: F401,F403
from diffedu.course.checks.lesson05 import *  # noqa: F401,F403
from diffedu.course.checks.lesson06 import *  # noqa: F401,F403
from diffedu.course.checks.lesson07 import *  # noqa: F401,F403
from diffedu.course.checks.lesson08 import *  # noqa: F401,F403
from diffedu.course.checks.lesson09 import *  # noqa: F401,F403
from diffedu.course.checks.lesson10 import *  # noqa: F401,F403
from diffedu.course.checks.lesson13 import *  # noqa: F401,F403
