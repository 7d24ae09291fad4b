"""The leaderboard: the paper's tables regenerated from run records, beside the paper's numbers, and plots.

``runs`` finds and chooses run records, ``tables`` builds the tables, ``render``
writes Markdown, LaTeX and CSV, ``plots`` and ``rewardlog`` draw the figures,
``build`` ties them together for ``python -m harness leaderboard``.
"""

from harness.leaderboard.build import Written, plot_reward_log, write_leaderboard
from harness.leaderboard.model import LeaderboardError

__all__ = ["LeaderboardError", "Written", "plot_reward_log", "write_leaderboard"]
