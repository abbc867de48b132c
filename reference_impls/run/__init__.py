"""Running a method's recipe end to end: teacher vs. baseline student vs. distilled student.

Above the method packages: nothing in ``white_box/`` or ``black_box/`` imports it.
"""
