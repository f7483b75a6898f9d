"""lmms-eval task functions of vtom's task pack (`!function utils.NAME` in the YAML files); they live in `vtom.lmms`."""
from vtom.lmms import (doc_to_visual, gen_doc_to_text, gen_process_results, mc_doc_to_choice, mc_doc_to_target, mc_doc_to_text,
                       mc_process_results, tomloc_doc_to_text, tomloc_process_results)

__all__ = ["doc_to_visual", "gen_doc_to_text", "gen_process_results", "mc_doc_to_choice", "mc_doc_to_target", "mc_doc_to_text",
           "mc_process_results", "tomloc_doc_to_text", "tomloc_process_results"]
