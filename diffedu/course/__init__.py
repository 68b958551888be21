"""The course machinery: what runs the notebooks, apart from the library that the lessons build.

`profiles` (`start`, the quick / cpu / gpu sizes), `checks` (the exercise checks, one module per lesson),
`grading` (strict checks for an autograder), `lessons` (generates lessons/ from solutions/), `widgets` and
`plotting` (the pictures and sliders of the lessons) and `records` (the benchmarks' recorded figures).
Nothing in the library (`diffedu.*` outside this folder) imports from here.
"""
