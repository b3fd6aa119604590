"""Model code. Kept import-light: `budgetlm.models.config` and `budgetlm.models.presets` need no
torch; import `budgetlm.models.transformer` / `budgetlm.models.heads` for the modules themselves."""

from budgetlm.models.config import ModelConfig

__all__ = ["ModelConfig"]
