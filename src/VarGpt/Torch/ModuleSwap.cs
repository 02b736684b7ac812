using System.Collections;
using System.Reflection;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace VarGpt.Torch;

/// <summary>
/// Swaps a child module of a TorchSharp model for another (LoRA wraps Linear layers, int8 quantization replaces them).
/// TorchSharp's Linear is sealed, so the swap sets the parent's field (which must be typed Module&lt;Tensor,Tensor&gt;
/// or wider, not Linear), a ModuleList element, or a Sequential entry, and re-registers the parent's children in their
/// original order so state_dict key order is unchanged.
/// </summary>
public static class ModuleSwap
{
    /// <summary>Every named submodule of <paramref name="root"/> by name: the lookup <see cref="Replace"/> reads and keeps current.</summary>
    public static Dictionary<string, nn.Module> Modules(nn.Module root) => root.named_modules().ToDictionary(m => m.name, m => m.module);

    /// <summary>Swaps the child <paramref name="name"/> for <paramref name="replacement"/> in its parent, keeping child order.</summary>
    public static void Replace(nn.Module root, Dictionary<string, nn.Module> modules, string name, nn.Module<Tensor, Tensor> replacement)
    {
        int dot = name.LastIndexOf('.');
        string parentName = dot < 0 ? "" : name[..dot], key = name[(dot + 1)..];
        var parent = parentName.Length == 0 ? root : modules[parentName];
        var old = modules[name];

        if (parent is Sequential seq)
        {
            var list = typeof(Sequential).GetField("_modules", BindingFlags.NonPublic | BindingFlags.Instance)?.GetValue(seq) as IList
                ?? throw new NotSupportedException($"cannot replace '{name}': this TorchSharp version's Sequential has no _modules list");
            int i = IndexOf(list, old);
            if (i < 0) throw new InvalidOperationException($"'{name}' not found in its Sequential");
            list[i] = replacement;
        }
        else if (parent.GetType().IsGenericType && parent.GetType().GetGenericTypeDefinition() == typeof(ModuleList<>))
        {
            var elem = parent.GetType().GetGenericArguments()[0];
            if (!elem.IsInstanceOfType(replacement))
                throw new NotSupportedException($"cannot replace '{name}': its parent is a ModuleList<{elem.Name}>; declare it as ModuleList<Module<Tensor, Tensor>> so the layer can be swapped");
            var indexer = parent.GetType().GetProperty("Item", [typeof(int)])
                ?? throw new NotSupportedException($"cannot replace '{name}': ModuleList has no int indexer");
            indexer.SetValue(parent, replacement, [int.Parse(key)]);
        }
        else
        {
            var field = FindField(parent, key, old)
                ?? throw new NotSupportedException($"cannot replace '{name}': no field '{key}' on {parent.GetType().Name} holds it");
            if (!field.FieldType.IsInstanceOfType(replacement))
                throw new NotSupportedException($"cannot replace '{name}': field {parent.GetType().Name}.{key} is typed {field.FieldType.Name}; TorchSharp's Linear is sealed, so declare swappable layers as Module<Tensor, Tensor>");
            field.SetValue(parent, replacement);
        }

        // Re-register this child and every later sibling so named_children()/state_dict() order stays the original.
        var children = parent.named_children().ToList();
        int at = children.FindIndex(c => c.name == key);
        for (int i = at; i < children.Count; i++) parent.register_module(children[i].name, null!);
        for (int i = at; i < children.Count; i++) parent.register_module(children[i].name, i == at ? replacement : children[i].module);
        modules[name] = replacement;
    }

    static int IndexOf(IList list, object item)
    {
        for (int i = 0; i < list.Count; i++) if (ReferenceEquals(list[i], item)) return i;
        return -1;
    }

    /// <summary>The field named <paramref name="key"/> (TorchSharp registers children under their field names) holding <paramref name="child"/>.</summary>
    static FieldInfo? FindField(object parent, string key, object child)
    {
        for (var t = parent.GetType(); t != null; t = t.BaseType)
        {
            var f = t.GetField(key, BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly);
            if (f != null && ReferenceEquals(f.GetValue(parent), child)) return f;
        }
        return null;
    }
}
