"""The accelerate configs, read by accelerate's own code: each one loads, and `accelerate launch` turns it into the
processes and settings its name promises. No GPU is needed to check what accelerate would start."""

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, DistributedType
from accelerate.utils import launch as accelerate_launch
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env, prepare_simple_launcher_cmd_env

from tests.helpers import REPO

CONFIG_DIR = REPO / "accelerate_configs"

# file -> (distributed type, processes over all machines, machines)
EXPECTED = {
    "cpu.yaml": (DistributedType.NO, 1, 1),
    "single_gpu.yaml": (DistributedType.NO, 1, 1),
    "multi_gpu.yaml": (DistributedType.MULTI_GPU, 8, 1),
    "multi_node.yaml": (DistributedType.MULTI_GPU, 16, 2),
    "deepspeed_zero2.yaml": (DistributedType.DEEPSPEED, 8, 1),
    "deepspeed_zero3.yaml": (DistributedType.DEEPSPEED, 8, 1),
    "fsdp.yaml": (DistributedType.FSDP, 8, 1),
}


@pytest.fixture(autouse=True)
def free_ports(monkeypatch):
    """Whether a port is taken is a fact about this machine, not about the configs."""
    monkeypatch.setattr(accelerate_launch, "is_port_in_use", lambda port: False)


def launch_args(name: str, *options: str):
    """The options `accelerate launch --config_file <name> [options] dpo.py` runs with, config file included."""
    args = launch_command_parser().parse_args(["--config_file", str(CONFIG_DIR / name), *options, "dpo.py"])
    return _validate_launch_command(args)[0]


def test_every_config_is_checked_here():
    assert sorted(path.name for path in CONFIG_DIR.iterdir()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_loads_with_accelerate(name):
    config = load_config_from_file(str(CONFIG_DIR / name))
    assert (config.distributed_type, config.num_processes, config.num_machines) == EXPECTED[name]
    assert config.mixed_precision == "no"  # precision is the training config's bf16, so the two cannot disagree


@pytest.mark.parametrize("name", EXPECTED)
def test_section_keys_are_launch_options(name):
    """accelerate copies deepspeed_config and fsdp_config keys onto its launch options unchecked: a misspelt key
    would be ignored without a word."""
    config = load_config_from_file(str(CONFIG_DIR / name))
    options = {action.dest for action in launch_command_parser()._actions}
    assert [key for key in [*config.deepspeed_config, *config.fsdp_config] if key not in options] == []


def test_cpu_config_keeps_accelerate_on_the_cpu():
    _, env = prepare_simple_launcher_cmd_env(launch_args("cpu.yaml"))
    assert env["ACCELERATE_USE_CPU"] == "True"


def test_multi_gpu_starts_one_process_per_gpu():
    args = launch_args("multi_gpu.yaml")
    prepare_multi_gpu_env(args)
    assert args.nproc_per_node == "8"


@pytest.mark.parametrize("machine_rank", [0, 1])
def test_multi_node_starts_8_processes_on_each_of_2_machines(machine_rank):
    args = launch_args("multi_node.yaml", "--machine_rank", str(machine_rank))  # as each node's command line has it
    prepare_multi_gpu_env(args)
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "8", machine_rank)
    assert (args.rdzv_backend, args.rdzv_endpoint) == ("static", "10.0.0.1:29500")


@pytest.mark.parametrize("name", ["multi_gpu.yaml", "deepspeed_zero3.yaml", "fsdp.yaml"])
def test_any_config_spans_nodes_from_the_command_line(name):
    """The multi-node options of multi_node.yaml, given on the command line, override those of the file."""
    options = ["--num_machines", "2", "--num_processes", "16", "--machine_rank", "1"]
    options += ["--main_process_ip", "10.0.0.1", "--main_process_port", "29500"]
    args = launch_args(name, *options)
    if name.startswith("deepspeed"):
        args.deepspeed_fields_from_accelerate_config = ""
        command, _ = prepare_deepspeed_cmd_env(args)
        assert command is None  # the "standard" launcher: torchrun on each node, no pdsh or hostfile
    else:
        prepare_multi_gpu_env(args)
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "8", 1)
    assert args.rdzv_endpoint == "10.0.0.1:29500"


@pytest.mark.parametrize("name, stage", [("deepspeed_zero2.yaml", 2), ("deepspeed_zero3.yaml", 3)])
def test_deepspeed_config_that_accelerate_builds(name, stage, monkeypatch):
    """The DeepSpeed config each training process would build from the launcher's environment."""
    args = launch_args(name)
    config = load_config_from_file(str(CONFIG_DIR / name))
    args.deepspeed_fields_from_accelerate_config = ",".join(config.deepspeed_config)  # as launch_command sets it
    _, env = prepare_deepspeed_cmd_env(args)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["stage"] == stage
    assert (zero["offload_optimizer"]["device"], zero["offload_param"]["device"]) == ("none", "none")
    if stage == 3:
        # Trainer.save_model gathers the sharded adapter into adapter_model.safetensors only with this on.
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
        assert plugin.zero3_init_flag  # each process loads only its shard of the base model


def test_fsdp_settings_reach_the_processes():
    env = prepare_multi_gpu_env(launch_args("fsdp.yaml"))
    assert env["ACCELERATE_USE_FSDP"] == "true"
    assert env["FSDP_VERSION"] == "1"
    # Trainer.save_model writes the adapter only from a full state dict; a sharded one would leave nothing to merge.
    assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    assert env["FSDP_USE_ORIG_PARAMS"] == "true"  # frozen base and trainable LoRA weights in one FSDP unit
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == env["FSDP_SYNC_MODULE_STATES"] == "true"
