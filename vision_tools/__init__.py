"""Visual tools called during reasoning (ViRC): tools, the turn protocol, the multi-turn engine,
the Python API (``reason``), the HTTP API (``mmpost serve``) and the CRU data builder.

    from vision_tools import reason
    result = reason(model, processor, "image.png", "How many circles?")

See docs/api.md.
"""

from vision_tools.api import Reasoning, build_prompt, reason, reason_batch
from vision_tools.engine import EngineConfig, ToolEngine, Trajectory, TurnRecord
from vision_tools.protocol import CODES, ToolCall, Turn, Violation, parse_turn, system_prompt
from vision_tools.tools import (
    VIRC_TOOLS,
    Tool,
    ToolContext,
    ToolError,
    crop_image,
    display_image,
    scale_image,
    tool,
)

__all__ = [
    "CODES",
    "VIRC_TOOLS",
    "EngineConfig",
    "Reasoning",
    "Tool",
    "ToolCall",
    "ToolContext",
    "ToolEngine",
    "ToolError",
    "Trajectory",
    "Turn",
    "TurnRecord",
    "Violation",
    "build_prompt",
    "crop_image",
    "display_image",
    "parse_turn",
    "reason",
    "reason_batch",
    "scale_image",
    "system_prompt",
    "tool",
]
