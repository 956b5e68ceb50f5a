"""What the question probes share: `QuestionProbe` (the algorithm, checks, metrics, rows,
tables, figures and schema part), its section's declarations (`count`, `text`) and its own row
fields (`row`), the facts it plants and the groups it asks about (`Fact`, `Drawn`, `Group`,
`Question`), and the words it draws (kit.words). A question probe imports what it needs from
here."""

from kvprobe.probes.kit.probe import Drawn, QuestionProbe
from kvprobe.probes.kit.questions import Fact, Group, Question
from kvprobe.probes.kit.schema import row
from kvprobe.probes.kit.spec import count, text

__all__ = ["Drawn", "Fact", "Group", "Question", "QuestionProbe", "count", "row", "text"]
