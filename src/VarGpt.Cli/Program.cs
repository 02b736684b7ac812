using static TorchSharp.torch;
var a = ones(2, 2);
Console.WriteLine(a.matmul(a).sum().item<float>());
