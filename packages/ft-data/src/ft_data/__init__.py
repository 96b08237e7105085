"""ft-data: the data pipeline.

Rows from files (``readers``) become conversations (``formats``), conversations become text
and loss masks (``templates``, ``tokenize``), examples go into an HDF5 prepared dataset
(``prepare``, ``hdf5``), and trainers read it back as seeded, resumable batches
(``batches``).
"""

from ft_data.batches import Batches
from ft_data.cache import CachedResult, CacheEntry, DatasetCache, prepare_cached
from ft_data.config import DataSettings, options_from_config
from ft_data.contamination import ContaminationReport, find_contamination
from ft_data.conversation import Conversation, Message, check_conversation
from ft_data.errors import DataError, RowProblem
from ft_data.explain import ExplainedRow, Explanation, explain_rows
from ft_data.formats import Detection, Format, available_formats, detect_format, get_format
from ft_data.hdf5 import PreparedDataset, PreparedWriter
from ft_data.hub import HubDataset
from ft_data.mixture import MixSource, Mixture
from ft_data.prepare import PrepareOptions, PrepareReport, PrepareResult, prepare_dataset
from ft_data.quality import DuplicateReport, conversation_text, find_duplicates, normalize_text
from ft_data.readers import find_files, local_files, read_file, read_rows
from ft_data.report import QualityReport, quality_report
from ft_data.split import ValidationPlan, plan_validation, split_rows
from ft_data.stats import DatasetStats, dataset_stats, render_stats
from ft_data.summary import prepare_summary, stats_summary
from ft_data.templates import ChatTemplate, available_templates, get_template
from ft_data.tokenize import TokenizedExample, tokenize_conversations, tokenize_texts
from ft_data.tokenizer import ModelTokenizer, load_tokenizer

__all__ = [
    "Batches",
    "CacheEntry",
    "CachedResult",
    "ChatTemplate",
    "ContaminationReport",
    "Conversation",
    "DataError",
    "DataSettings",
    "DatasetCache",
    "DatasetStats",
    "Detection",
    "DuplicateReport",
    "ExplainedRow",
    "Explanation",
    "Format",
    "HubDataset",
    "Message",
    "MixSource",
    "Mixture",
    "ModelTokenizer",
    "PrepareOptions",
    "PrepareReport",
    "PrepareResult",
    "PreparedDataset",
    "PreparedWriter",
    "QualityReport",
    "RowProblem",
    "TokenizedExample",
    "ValidationPlan",
    "available_formats",
    "available_templates",
    "check_conversation",
    "conversation_text",
    "dataset_stats",
    "detect_format",
    "explain_rows",
    "find_contamination",
    "find_duplicates",
    "find_files",
    "get_format",
    "get_template",
    "load_tokenizer",
    "local_files",
    "normalize_text",
    "options_from_config",
    "plan_validation",
    "prepare_cached",
    "prepare_dataset",
    "prepare_summary",
    "quality_report",
    "read_file",
    "read_rows",
    "render_stats",
    "split_rows",
    "stats_summary",
    "tokenize_conversations",
    "tokenize_texts",
]
