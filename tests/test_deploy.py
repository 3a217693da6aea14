"""QONNX export, checked by QONNX's own executor against the PyTorch model."""
import json

import numpy as np
import onnx
import pytest
import torch
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx

from bsq_explore.cli import main
from bsq_explore.data import load_for
from bsq_explore.export import load_model
from bsq_explore.graphs import QONNX_DOMAIN, quant_bits, to_qonnx
from bsq_explore.layers import BitLayer, convert_
from bsq_explore.models import lenet5
from bsq_explore.runs import load_run

from conftest import copy_run, one_line
from test_sweep import EXAMPLES


def run_graph(proto, x: torch.Tensor) -> np.ndarray:
    return execute_onnx(ModelWrapper(proto), {"input": x.numpy()})[proto.graph.output[0].name]


def assert_graph_computes(proto, model, x: torch.Tensor, rtol: float, atol: float) -> None:
    """QONNX's executor on proto gives the model's outputs within tolerance, and every input the same class."""
    with torch.no_grad():
        expected = model(x).numpy()
    got = run_graph(proto, x)
    assert np.allclose(got, expected, rtol=rtol, atol=atol) and np.array_equal(got.argmax(1), expected.argmax(1))


@pytest.mark.parametrize("name", ["digits-a0.1", "digits-a0.3", "digits-a1", "digits-u2", "fashion-a0.01"])
def test_shipped_runs_exported_to_qonnx_compute_what_the_pytorch_model_computes(name):
    run = load_run(EXAMPLES / name)
    data = load_for(run.config)
    model = load_model(run, data).eval()
    x = data.test_x  # the whole test set
    proto = to_qonnx(model, tuple(data.shape), batch=len(x))
    assert_graph_computes(proto, model, x, rtol=1e-4, atol=1e-4)
    final = run.layers[run.layers.step == run.layers.step.max()].set_index("layer").nbits
    assert quant_bits(proto.graph) == {layer: bits for layer, bits in final.items() if bits}  # n bits: Quant of n + 1
    for node in proto.graph.node:
        if node.op_type == "Quant":
            attrs = {a.name: a.i for a in node.attribute if a.name in ("signed", "narrow")}
            assert node.domain == QONNX_DOMAIN and attrs == {"signed": 1, "narrow": 1}
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for layer in final[final == 0].index:  # emptied layers are weights of zeros
        assert not weights[f"{layer}.weight"].any()


def test_a_converted_conv_net_with_random_bits_exports_exactly():
    torch.manual_seed(0)
    model = convert_(lenet5(in_channels=3, num_classes=5, image_size=12), nbits=3).eval()
    x = torch.randn(16, 3, 12, 12)
    assert_graph_computes(to_qonnx(model, (3, 12, 12), batch=16), model, x, rtol=1e-4, atol=1e-5)


def test_the_cli_writes_a_qonnx_graph_and_prints_its_size(tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", "digits-a0.3", "--format", "qonnx", "--out", str(out), "--runs", str(EXAMPLES)]) == 0
    printed = capsys.readouterr().out
    run = load_run(EXAMPLES / "digits-a0.3")
    exported = run.read_model()
    packed = sum(s["q"].numel() * s["nbits"] / 8 for s in exported["layers"].values())
    assert f"weights {packed:.0f} bytes packed against" in printed and "fc1: 4 bits x 16384 weights" in printed
    proto = onnx.load(str(out))
    x = load_for(run.config).test_x[:1]  # the file is for one image at a time, as FINN takes it
    with torch.no_grad():
        expected = load_model(run, load_for(run.config)).eval()(x).numpy()
    assert np.allclose(run_graph(proto, x), expected, rtol=1e-4, atol=1e-4)


def test_exporting_a_float_an_unfinished_or_a_damaged_run_is_one_line(tmp_path, tiny_run, capsys):
    running = copy_run(tiny_run, tmp_path, "running")
    info = json.loads((running / "run.json").read_text())
    info["status"] = "running"
    (running / "run.json").write_text(json.dumps(info))
    (copy_run(tiny_run, tmp_path, "damaged") / "run.json").write_text("{oops")
    for run, root, says in [("digits-float", EXAMPLES, "is a float model"), ("running", tmp_path, "is running"),
                            ("damaged", tmp_path, "run.json is not valid JSON")]:
        out = tmp_path / "x.onnx"
        assert main(["export", run, "--format", "qonnx", "--out", str(out), "--runs", str(root)]) == 2, run
        assert says in one_line(capsys.readouterr().err) and not out.exists()


@pytest.mark.parametrize("act_bits", [4, 2], ids=["QuantReLU6", "PACT"])
def test_activation_quantizers_export_at_their_fixed_scale(tmp_path, act_bits):
    from bsq_explore.bits import quantize
    from bsq_explore.config import preset
    from bsq_explore.models import PACT, QuantReLU6
    from bsq_explore.train import train

    from conftest import TINY

    run = load_run(train(preset("digits-cnn", **TINY, act_bits=act_bits), runs=tmp_path, name="a"))
    data = load_for(run.config)
    model = load_model(run, data).eval()
    acts = [m for m in model if isinstance(m, (QuantReLU6, PACT))]
    assert len(acts) == 4 and all(torch.isfinite(m.running_max) for m in acts if isinstance(m, QuantReLU6))

    def fixed(m, inputs, output):  # the oracle: each quantizer at its fixed top instead of the batch max
        top, clip = (m.alpha, m.alpha) if isinstance(m, PACT) else (m.running_max, 6.0)
        return top * quantize(inputs[0].clamp(0, float(clip)) / top, m.bits)
    for m in acts:
        m.register_forward_hook(fixed)
    x = data.test_x
    proto = to_qonnx(model, tuple(data.shape), batch=len(x))
    assert_graph_computes(proto, model, x, rtol=1e-4, atol=1e-4)
    values = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    activation_quants = [n for n in proto.graph.node if n.op_type == "Quant" and not n.output[0].endswith(".weight")]
    assert [int(values[n.input[3]]) for n in activation_quants] == [act_bits] * 4


def test_a_model_without_a_running_max_is_refused_in_one_line():
    from bsq_explore.models import resnet20

    with pytest.raises(ValueError, match="layer act1 has no running max .* retrain it to export"):
        to_qonnx(resnet20(act_bits=4).eval(), (3, 32, 32))  # never trained, as the shipped CIFAR runs predate it


def test_a_converted_resnet_exports_with_its_batch_norms_shortcuts_and_residual_adds():
    from bsq_explore.models import not_shortcut, resnet20

    torch.manual_seed(0)
    model = convert_(resnet20(num_classes=4), nbits=3, filter_fn=not_shortcut)
    model(torch.randn(8, 3, 32, 32))  # a training pass: batch norm statistics that are not the defaults
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    proto = to_qonnx(model, (3, 32, 32), batch=4)
    assert_graph_computes(proto, model, x, rtol=1e-3, atol=1e-4)
    assert len(quant_bits(proto.graph)) == 20 and set(quant_bits(proto.graph).values()) == {3}  # 19 convs and fc
    assert sum(n.op_type == "Add" for n in proto.graph.node) == 9  # one per residual block


def test_export_leaves_the_model_as_it_was():
    from bsq_explore.models import QuantReLU6

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), QuantReLU6(4))
    model(torch.ones(2, 4))  # a training batch sets the running max
    before = model[2].running_max.clone()
    to_qonnx(model, (4,))
    assert model.training and torch.equal(model[2].running_max, before)


def test_an_exported_conv_net_lowers_to_matmuls_and_costs_with_qonnx_at_the_lowest_ir_opset_13_needs():
    from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul
    from qonnx.util.inference_cost import inference_cost

    run = load_run(EXAMPLES / "fashion-a0.01")
    data = load_for(run.config)
    model = load_model(run, data).eval()
    proto = to_qonnx(model, tuple(data.shape))  # batch 1, as FINN's lowering takes it
    assert proto.ir_version == 7 and {o.domain: o.version for o in proto.opset_import}[""] == 13
    assert all(node.op_type != "Conv" or any(a.name == "kernel_shape" for a in node.attribute)
               for node in proto.graph.node)
    lowered = ModelWrapper(proto).transform(LowerConvsToMatMul()).model
    assert not [n for n in lowered.graph.node if n.op_type == "Conv"]
    for x in data.test_x[:8].split(1):
        assert np.allclose(run_graph(lowered, x), run_graph(proto, x), rtol=1e-4, atol=1e-4)
    cost = inference_cost(ModelWrapper(proto), discount_sparsity=False)["total_cost"]["total_mem_w_bits"]
    assert cost == sum(spec["q"].numel() * (spec["nbits"] + 1) for spec in run.read_model()["layers"].values()
                       if spec["nbits"])  # QONNX counts the sign bit that the kit's magnitude bits leave out


def test_export_reads_no_image_when_the_run_records_its_shape_even_far_from_its_data(tmp_path, monkeypatch, capsys):
    import bsq_explore.data
    from bsq_explore.store import MODEL

    run = load_run(EXAMPLES / "cifar10-a0.05")  # config: folder:../shared/datasets/cifar10, relative to the checkout
    assert run.config.dataset.startswith("folder:../")
    monkeypatch.chdir(tmp_path)  # from another folder that path leads nowhere

    def no_data(*_):
        raise AssertionError("export loaded the data")
    monkeypatch.setattr(bsq_explore.data, "load_for", no_data)
    assert main(["export", "cifar10-a0.05", "--format", "qonnx", "--out", "r.onnx", "--runs", str(EXAMPLES)]) == 0
    proto = onnx.load("r.onnx")
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 32]
    assert quant_bits(proto.graph) == {k: v for k, v in run.final_layers().set_index("layer").nbits.items() if v}

    old = copy_run(EXAMPLES / "cifar10-a0.05", tmp_path, "old")  # as a run from before the running max
    exported = torch.load(old / MODEL, weights_only=True)
    exported["state"]["layer2.1.act1.running_max"] = torch.tensor(float("nan"))
    torch.save(exported, old / MODEL)
    capsys.readouterr()
    assert main(["export", "old", "--format", "qonnx", "--out", "o.onnx", "--runs", str(tmp_path)]) == 2
    assert "layer layer2.1.act1 has no running max" in one_line(capsys.readouterr().err)


def test_a_converted_torchvision_model_is_traced_to_qonnx_and_computes_what_pytorch_computes():
    from bsq_explore.models import torchvision_model

    torch.manual_seed(0)
    model = torchvision_model("resnet18", 3, 10)
    model(torch.randn(8, 3, 32, 32))  # a training pass: batch norm statistics that are not the defaults
    convert_(model, nbits=4, filter_fn=lambda m, name: name != "fc").eval()
    x = torch.randn(2, 3, 32, 32)
    proto = to_qonnx(model, (3, 32, 32), batch=2)
    assert_graph_computes(proto, model, x, rtol=1e-3, atol=1e-4)
    convs = [n for n, m in model.named_modules() if isinstance(m, BitLayer)]
    assert quant_bits(proto.graph) == {name: 4 for name in convs} and "fc" not in quant_bits(proto.graph)
    assert proto.ir_version == 8 and all(any(a.name == "kernel_shape" for a in n.attribute)
                                         for n in proto.graph.node if n.op_type == "Conv")
    assert sum(n.op_type == "BatchNormalization" for n in proto.graph.node) == 20  # kept, not folded into weights


def test_a_model_of_ones_own_trained_with_fit_exports_to_qonnx(tmp_path):
    from bsq_explore.export import load_quantized
    from bsq_explore.train import fit

    from test_fit import CONFIG, TinyNet

    ds = load_for(load_run(EXAMPLES / "digits-a0.3").config)
    torch.manual_seed(0)
    run = load_run(fit(TinyNet(), (ds.train_x[:256], ds.train_y[:256]), (ds.test_x, ds.test_y), CONFIG,
                       runs=tmp_path, name="mine"))
    model = load_quantized(TinyNet(), run.read_model()).eval()
    x = ds.test_x[:16]
    proto = to_qonnx(model, (1, 8, 8), batch=len(x))
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.allclose(run_graph(proto, x), expected, rtol=1e-4, atol=1e-4)
    assert quant_bits(proto.graph) == {k: v for k, v in run.final_layers().set_index("layer").nbits.items() if v}


def test_a_traced_model_with_activation_quantizers_is_refused_in_one_line():
    from bsq_explore.models import QuantReLU6

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(), QuantReLU6(4))  # Dropout: not the kit's
    with pytest.raises(ValueError, match="cannot trace its activation quantizers \\(QuantReLU6\\)"):
        to_qonnx(model.eval(), (4,))


def test_the_cli_writes_a_qcdq_graph_that_onnxruntime_runs_as_qonnx_runs_the_quant_graph(tmp_path, capsys):
    import onnxruntime

    from bsq_explore.data import load_test

    run = load_run(EXAMPLES / "cifar10-a0.05")
    out = tmp_path / "q.onnx"
    assert main(["export", "cifar10-a0.05", "--format", "qcdq", "--out", str(out), "--runs", str(EXAMPLES)]) == 0
    assert "float weights in the QCDQ graph, the same values: conv1 (8 bits and a sign);" in capsys.readouterr().out
    proto = onnx.load(str(out))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "Quant" not in ops and proto.ir_version == 7
    assert all(o.domain == "" for o in proto.opset_import)  # standard ONNX only
    quantized = {n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    final = run.final_layers().set_index("layer").nbits
    assert {layer for layer, bits in final.items() if 0 < bits < 8} <= {q.removesuffix(".weight_float") for q in quantized}
    session = onnxruntime.InferenceSession(out.read_bytes())
    qonnx = to_qonnx(load_model(run).eval(), (3, 32, 32))
    for x in load_test(run.config, run.info["data"], 4).test_x.split(1):  # one image at a time, as exported
        assert np.allclose(session.run(None, {"input": x.numpy()})[0], run_graph(qonnx, x), rtol=1e-4, atol=1e-4)


def test_a_sequential_subclass_with_its_own_forward_is_traced_not_written_child_by_child():
    class Residual(torch.nn.Sequential):
        def forward(self, x):
            return x + super().forward(x)

    torch.manual_seed(0)
    model = convert_(Residual(torch.nn.Linear(4, 4), torch.nn.ReLU()), nbits=3).eval()
    x = torch.randn(2, 4)
    with torch.no_grad():
        expected = model(x).numpy()
    proto = to_qonnx(model, (4,), batch=2)
    assert np.allclose(run_graph(proto, x), expected, rtol=1e-4, atol=1e-5) and quant_bits(proto.graph) == {"0": 3}
