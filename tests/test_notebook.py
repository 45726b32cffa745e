"""check_parameters: under papermill, an unknown parameter or a value of the wrong type is one clear line."""
import pytest

from mmdlib import notebook
from mmdlib.errors import MMDLibError

CELL = 'preset = "digits"  # named settings\nmodel = None\niterations = 400\nlr = 5e-6\nbudgets = [5, 10]\nflip = False\n'


class Shell:
    def __init__(self, injected: str):
        self.user_ns = {"In": ["", CELL, injected, "check_parameters()"]}
        exec(CELL + injected, {}, self.user_ns)


@pytest.mark.parametrize("injected", ['# Parameters\niterations = 3\n', '# Parameters\nlr = 1\nmodel = "x"\n',
                                      '# Parameters\nbudgets = [5]\nflip = True\n'])
def test_parameters_of_the_right_kind_pass(monkeypatch, injected):
    monkeypatch.setattr("IPython.get_ipython", lambda: Shell(injected))
    notebook.check_parameters()


@pytest.mark.parametrize("injected,msg", [
    ('# Parameters\ntimesteps = 5\n', "unknown notebook parameter\\(s\\): timesteps; this notebook's parameters are"),
    ('# Parameters\niterations = "abc"\n', "parameter iterations must be an integer like its default 400, got 'abc'"),
    ('# Parameters\niterations = 2.5\n', "parameter iterations must be an integer"),
    ('# Parameters\nbudgets = 5\n', "parameter budgets must be a list"),
    ('# Parameters\nflip = "no"\n', "parameter flip must be True or False"),
])
def test_an_unknown_parameter_or_a_wrong_type_is_refused(monkeypatch, injected, msg):
    monkeypatch.setattr("IPython.get_ipython", lambda: Shell(injected))
    with pytest.raises(MMDLibError, match=msg):
        notebook.check_parameters()


def test_outside_papermill_it_does_nothing(monkeypatch):
    monkeypatch.setattr("IPython.get_ipython", lambda: None)
    notebook.check_parameters()
