using Microsoft.Playwright;

namespace VarGpt.Tests.Server;

/// <summary>
/// The web page in a real browser: headless Chromium from Debian's `chromium` package driven by Playwright (its own
/// browser download is never used: ExecutablePath). Chats with an image, generates an image while the per-scale previews
/// arrive, edits the result. Screenshots are kept in the test output folder (web-page-*.png). On CI (CI=true) a missing
/// browser fails the test; .ci/run installs it with apt.
/// </summary>
[Collection(nameof(TorchDefaultsCollection))]
public class WebPageTests(ServedModel served) : IClassFixture<ServedModel>
{
    public const string Chromium = "/usr/bin/chromium";

    /// <summary>Flags that work on this closed network (no background connections, no sandbox as root).</summary>
    static readonly string[] Flags =
        ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];

    public static string ScreenshotDir => Path.Combine(AppContext.BaseDirectory, "TestResults");

    [Fact]
    public async Task Chat_with_an_image_then_generate_with_live_previews_then_edit_the_result()
    {
        if (!File.Exists(Chromium))
        {
            const string why = $"{Chromium} is missing: install Debian's chromium (apt-get install chromium); .ci/run does";
            if (Environment.GetEnvironmentVariable("CI") is { Length: > 0 }) Assert.Fail(why);
            Assert.Skip(why);
        }
        Directory.CreateDirectory(ScreenshotDir);
        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions { ExecutablePath = Chromium, Headless = true, Args = Flags });
        var page = await browser.NewPageAsync(new BrowserNewPageOptions { ViewportSize = new ViewportSize { Width = 1100, Height = 900 } });
        page.SetDefaultTimeout(20_000);
        var consoleErrors = new List<string>();
        // uncaught script errors fail the test (failed resource loads, such as the 401 before the key is typed, do not)
        page.PageError += (_, e) => consoleErrors.Add(e);

        try { await Walk(page); }
        catch
        {
            await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(ScreenshotDir, "web-page-failure.png"), FullPage = true });
            TestContext.Current.TestOutputHelper?.WriteLine("browser console errors: " + string.Join(" | ", consoleErrors));
            throw;
        }
        Assert.Empty(consoleErrors);
        TestContext.Current.TestOutputHelper?.WriteLine($"screenshots: {ScreenshotDir}/web-page-{{chat,generate,edit}}.png");
    }

    async Task Walk(IPage page)
    {
        await page.GotoAsync(served.Url.ToString());
        // the server needs a key: the page asks the user for it
        await page.FillAsync("#api-key", ServedModel.Key);
        await page.DispatchEventAsync("#api-key", "change");
        await Assertions.Expect(page.Locator("#model")).ToContainTextAsync("shapesworld");

        // chat with an image
        var png = Path.Combine(ScreenshotDir, "scene.png");
        await File.WriteAllBytesAsync(png, ServedModel.ScenePng(), TestContext.Current.CancellationToken);
        await page.SetInputFilesAsync("#chat-image", png);
        await page.FillAsync("#chat-input", "What colour is the circle?");
        await page.FillAsync("#chat-max", "16");
        await page.ClickAsync("#chat-send");
        var answer = page.Locator("[data-testid=assistant][data-done=true]");
        await answer.WaitForAsync();
        Assert.DoesNotContain("error", await answer.GetAttributeAsync("class") ?? "");
        Assert.False(string.IsNullOrWhiteSpace(await answer.Locator("span").First.InnerTextAsync()));
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(ScreenshotDir, "web-page-chat.png") });

        // text to image: previews arrive scale by scale, then the final image with its seed
        await page.ClickAsync("button[data-tab=generate]");
        await page.FillAsync("#gen-seed", "3");
        await page.ClickAsync("#gen-send");
        await page.Locator("[data-testid=preview]").First.WaitForAsync();
        await page.Locator("#gen-image[data-final=true]").WaitForAsync();
        int scales = served.Server.Backend!.Model.DefaultImageSize.Scales;
        Assert.Equal(scales - 1, await page.Locator("#gen-scales [data-testid=preview]").CountAsync());
        Assert.Contains("seed 3", await page.Locator("#gen-meta [data-testid=seed]").InnerTextAsync());
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(ScreenshotDir, "web-page-generate.png") });

        // reuse the seed, then edit the generated image
        await page.FillAsync("#gen-seed", "");
        await page.ClickAsync("#gen-meta button:has-text('reuse seed')");
        Assert.Equal("3", await page.InputValueAsync("#gen-seed"));
        await page.ClickAsync("#gen-meta button:has-text('edit this image')");
        await Assertions.Expect(page.Locator("#edit-source")).ToBeVisibleAsync();
        await page.ClickAsync("#edit-send");
        await page.Locator("#edit-image-out[data-final=true]").WaitForAsync();
        Assert.Contains("seed", await page.Locator("#edit-meta [data-testid=seed]").InnerTextAsync());
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(ScreenshotDir, "web-page-edit.png"), FullPage = true });
    }
}
