import doctest

import umr


def test_package_docstring_example_runs():
    result = doctest.testmod(umr, verbose=False)
    assert result.attempted >= 5 and result.failed == 0


def test_public_names_resolve():
    for name in umr.__all__:
        assert getattr(umr, name) is not None
